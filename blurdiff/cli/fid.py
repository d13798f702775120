"""``blurdiff fid``: the FID between two image folders (or saved statistics), with what it rests on."""

from __future__ import annotations

import argparse
import sys

from blurdiff.fid import DEFAULT_LIMIT, fid_report

HELP = "FID between two image folders (or a folder and saved .npz statistics)"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, help="folder of real images, or an .npz with mu and sigma")
    p.add_argument("--fake", required=True, help="folder of generated images, or an .npz")
    p.add_argument(
        "--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache)"
    )
    p.add_argument(
        "--allow-other-weights",
        action="store_true",
        help="use an Inception weights file whose sha256 is not the published one's (6726825d...); "
        "the FID is then not comparable with published FIDs",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help="images per set (the paper reports FID-10K); a warning says when a set holds fewer",
    )
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    report = fid_report(
        args.real,
        args.fake,
        weights=args.inception_weights,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        allow_other_weights=args.allow_other_weights,
    )
    warnings = report.warnings()
    # The caveat goes on the FID line itself too: that is the line people copy into tables.
    caveat = " (NOT comparable with published FIDs: see the warnings on stderr)" if warnings else ""
    print(f"FID: {report.fid:.4f}{caveat}")
    print(f"real: {_count_text(report.real_count, report.real)}")
    print(f"fake: {_count_text(report.fake_count, report.fake)}")
    if report.weights_sha256 is None:
        print("Inception weights: none used (both sides are .npz statistics)")
    else:
        which = "the published pytorch-fid file" if report.published_weights else "NOT the published pytorch-fid file"
        print(f"Inception weights: {report.weights} (sha256 {report.weights_sha256[:8]}..., {which})")
    for warning in warnings:
        print(f"blurdiff fid: warning: {warning}", file=sys.stderr)
    return 0


def _count_text(count: int | None, path: str) -> str:
    if count is None:
        return f"{path} (an .npz that stores no image count: how many images it rests on is unknown)"
    return f"{count} images ({path})"

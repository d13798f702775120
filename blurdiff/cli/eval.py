"""``blurdiff eval``: the quality yardstick of a folder of samples, printed (and written as JSON)."""

from __future__ import annotations

import argparse
import json

from blurdiff.atomic import writable_target, write_text_atomic
from blurdiff.cli import seed_type
from blurdiff.quality import evaluate_folder, format_report

HELP = "the quality yardstick: samples against data, beside the data's noise floor"
DESCRIPTION = (
    "Multi-scale sliced Wasserstein distance, spectrum error, channel statistics and "
    "the out-of-range fraction of a folder of samples against a data set, each beside "
    "the same number for a disjoint set of data images (what a perfect generator "
    "scores). Needs no downloaded weights."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="folder of generated images (blurdiff sample --out)")
    p.add_argument(
        "--data",
        required=True,
        help="data set (lmdb or image folder) with at least twice as many images; "
        "held-out images, not the training set, to not reward memorisation",
    )
    p.add_argument(
        "--n", type=int, default=None, help="images per set (default: all samples, at most half the data set)"
    )
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the data subsets, patches and projections")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--check", action="store_true", help="exit with 1 when the verdict is poor or diverged")


def run(args: argparse.Namespace) -> int:
    if args.json:
        writable_target(args.json)  # refused before the work, not after
    report, stats_file = evaluate_folder(args.samples, args.data, n=args.n, seed=args.seed)
    n, (height, width) = report["n"], report["shape"][-2:]
    note = (
        f"(raw values before the clamp, from {stats_file})"
        if stats_file is not None
        else "(raw values unknown: these are of the PNGs, clamped)"
    )
    print(
        f"{n} samples from {report['samples']} against {n} images of {report['data']} (noise floor: {n} others), "
        f"{height}x{width}; out-of-range fractions {note}"
    )
    print(format_report(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"json: {args.json}")
    return 1 if args.check and report["verdict"] in ("poor", "diverged") else 0

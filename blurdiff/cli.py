"""The ``blurdiff`` command: ``blurdiff data|train|sample|eval|fid|spectrum ...`` (also ``python -m blurdiff``).

Each command's options live beside its code (``add_arguments`` in the module that runs it);
this file only assembles them.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable, Sequence


def _data(sub) -> None:
    p = sub.add_parser("data", help="make or export data sets")
    data = p.add_subparsers(dest="data_command", required=True)
    toy = data.add_parser("toy", help="write a synthetic dead-leaves data set as an LSUN-format lmdb")
    toy.add_argument("--out", required=True, help="lmdb folder to create")
    toy.add_argument("--n", type=int, required=True, help="number of images")
    toy.add_argument("--size", type=int, required=True, help="image side in pixels")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--overwrite", action="store_true", help="replace an existing data set at --out")
    toy.set_defaults(handler=_run_toy)
    photos = data.add_parser(
        "photos",
        help="write random crops of scikit-image's colour photographs as an LSUN-format lmdb",
        description="Random square crops (random photograph, position, scale from a tenth to half of the "
        "photograph's shorter side, horizontal flip) of the nine colour photographs that scikit-image "
        "ships in its wheel (read from the installed package, never downloaded), resized to --size, as "
        "an LSUN-format lmdb like `data toy`. Held-out split: one quadrant of every photograph "
        "(blurdiff.photos.PHOTOS names which); --split heldout crops lie inside it, --split train crops "
        "never touch it, so the two splits share no source pixel. Deterministic given --seed. Needs "
        'scikit-image: pip install "blurdiff[photos]" (or pip install scikit-image).',
    )
    photos.add_argument("--out", required=True, help="lmdb folder to create")
    photos.add_argument("--n", type=int, required=True, help="number of crops")
    photos.add_argument("--size", type=int, required=True, help="side of the crops in pixels")
    photos.add_argument("--seed", type=int, default=0)
    photos.add_argument(
        "--split",
        choices=("train", "heldout"),
        default="train",
        help="train: crops that never touch the held-out quadrant of any photograph; heldout: "
        "crops inside it (for the quality yardstick; disjoint from train)",
    )
    photos.add_argument("--overwrite", action="store_true", help="replace an existing data set at --out")
    photos.set_defaults(handler=_run_photos)
    export = data.add_parser("export", help="write an lmdb (or image folder) as PNGs 000000.png … (for FID)")
    export.add_argument("--src", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--limit", type=int, default=None)
    export.add_argument("--size", type=int, default=None, help="resize to this side, without cropping")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(handler=_run_export)


def _run_toy(args) -> int:
    from blurdiff.toy_data import make_toy_lmdb

    make_toy_lmdb(args.out, args.n, args.size, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.n} images of {args.size}x{args.size} to {args.out}")
    return 0


def _run_photos(args) -> int:
    from blurdiff.photos import PhotosUnavailableError, make_photos_lmdb

    try:
        make_photos_lmdb(args.out, args.n, args.size, seed=args.seed, split=args.split, overwrite=args.overwrite)
    except PhotosUnavailableError as e:  # an optional extra: say what to install, no traceback
        print(f"blurdiff data: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} {args.split} crops of {args.size}x{args.size} to {args.out}")
    return 0


def _run_export(args) -> int:
    from blurdiff.toy_data import export_lmdb_to_folder

    count = export_lmdb_to_folder(args.src, args.out, limit=args.limit, resolution=args.size, overwrite=args.overwrite)
    print(f"wrote {count} PNGs to {args.out}")
    return 0


def _fid(sub) -> None:
    p = sub.add_parser("fid", help="FID between two image folders (or a folder and saved .npz statistics)")
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
        default=10000,
        help="images per set (the paper reports FID-10K); a warning says when a set holds fewer",
    )
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default=None)
    p.set_defaults(handler=_run_fid)


def _run_fid(args) -> int:
    from blurdiff.fid import fid_report

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


def _spectrum(sub) -> None:
    p = sub.add_parser("spectrum", help="radially averaged power spectrum of samples against data (no weights)")
    p.add_argument("--samples", required=True, help="folder of generated images")
    p.add_argument("--data", required=True, help="folder of real images (see `blurdiff data export`)")
    p.add_argument("--out", default=None, help="PNG plot to write")
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(handler=_run_spectrum)


def _run_spectrum(args) -> int:
    from blurdiff.spectrum import plot_spectra, spectrum_report

    report = spectrum_report(args.samples, args.data, limit=args.limit)
    print(f"{report['n_samples']} samples, {report['n_data']} data images")
    print("radius  log10(samples/data)")
    for f, r in zip(report["frequencies"], report["log10_ratio"]):
        print(f"{f:6.0f}  {r:+.3f}")
    print(f"mean |log10 ratio| over the upper half of frequencies: {report['high_freq_mean_abs_log10_ratio']:.4f}")
    if args.out:
        freq = report["frequencies"]
        plot_spectra({"samples": (freq, report["power_samples"]), "data": (freq, report["power_data"])}, args.out)
        print(f"plot: {args.out}")
    return 0


def _eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="the quality yardstick: samples against data, beside the data's noise floor",
        description="Multi-scale sliced Wasserstein distance, spectrum error, channel statistics and "
        "the out-of-range fraction of a folder of samples against a data set, each beside "
        "the same number for a disjoint set of data images (what a perfect generator "
        "scores). Needs no downloaded weights.",
    )
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
    p.add_argument("--seed", type=int, default=0, help="seed of the data subsets, patches and projections")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--check", action="store_true", help="exit with 1 when the verdict is poor or diverged")
    p.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    import json
    from pathlib import Path

    from blurdiff.atomic import write_text_atomic
    from blurdiff.quality import MIN_IMAGES, SampleStats, evaluate, format_report, load_data_images
    from blurdiff.spectrum import load_image_folder

    samples_dir = Path(args.samples)
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"--samples {samples_dir} is not a folder")
    samples = load_image_folder(samples_dir)
    n = args.n if args.n is not None else len(samples)
    if n > len(samples):
        raise ValueError(f"--n {n}: the folder {samples_dir} holds only {len(samples)} images")
    if n < MIN_IMAGES:
        raise ValueError(f"the yardstick needs at least {MIN_IMAGES} samples, got {n} (in {samples_dir})")
    data = load_data_images(args.data, tuple(samples.shape[-2:]), 2 * n, seed=args.seed, exact=args.n is not None)
    n = min(n, len(data) // 2)
    if n < MIN_IMAGES:
        raise ValueError(
            f"the yardstick needs at least {2 * MIN_IMAGES} data images (a reference and a noise-floor "
            f"set of {MIN_IMAGES}), {args.data} holds {len(data)}"
        )
    raw, note = None, "(raw values unknown: these are of the PNGs, clamped)"
    stats_file = samples_dir / "stats.json"
    if stats_file.is_file():
        try:
            raw = SampleStats(**json.loads(stats_file.read_text())["raw"])
            note = f"(raw values before the clamp, from {stats_file})"
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{stats_file} is unreadable ({e}); remove it to evaluate the PNGs alone") from e
    report = evaluate(samples[:n], data[: 2 * n], raw_stats=raw, seed=args.seed)
    report["samples"], report["data"] = str(samples_dir), str(args.data)
    print(
        f"{n} samples from {samples_dir} against {n} images of {args.data} (noise floor: {n} others), "
        f"{samples.shape[-2]}x{samples.shape[-1]}; out-of-range fractions {note}"
    )
    print(format_report(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"json: {args.json}")
    return 1 if args.check and report["verdict"] in ("poor", "diverged") else 0


def _module_command(sub, name: str, module: str, help: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    p = sub.add_parser(name, help=help, description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.add_arguments(p)
    p.set_defaults(handler=mod.main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blurdiff", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _data(sub)
    _module_command(sub, "train", "blurdiff.train", "train a blur-diffusion model")
    _module_command(sub, "sample", "blurdiff.sample", "sample a trained run into a folder of PNGs")
    _module_command(sub, "figures", "blurdiff.figures", "figures of the process (forward process on real images)")
    _eval(sub)
    _fid(sub)
    _spectrum(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: its exit code, or 2 with a one-line error on stderr for bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except Exception as e:  # noqa: BLE001 - re-raised below unless it is bad input
        message = _user_error_message(e)
        if message is None:
            raise  # a programming error: keep the traceback
        # Bad input or a machine problem: say what is wrong, without a traceback.
        print(f"blurdiff {args.command}: error: {message}", file=sys.stderr)
        return 2


# Errors of the file system that the user, not the code, has to fix (missing or misplaced files,
# permissions, a read-only disk ...); raised by the OS, or by blurdiff with its own message.
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_USER_ERRNOS = {errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _user_error_message(e: Exception) -> str | None:
    """The one-line message for an error caused by the input or the machine; ``None`` for the rest."""
    from PIL import UnidentifiedImageError

    from blurdiff.data import UndecodableDataError
    from blurdiff.inception import InceptionWeightsError
    from blurdiff.toy_data import OutputExistsError

    if isinstance(e, OutputExistsError):
        return e.hint("--" + e.option.replace("_", "-"))  # the library's own hint says overwrite=True
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
        where = f" writing {e.filename}" if e.filename else ""
        return f"no space left on the device{where} ({e.strerror}); free some space and run again"
    if isinstance(e, RuntimeError) and "unexpected pos" in str(e):
        # torch.save's zip writer when a write came up short: in practice, a full disk.
        return f"a file could not be written completely (disk full?): {_first_line(e)}; free some space and run again"
    if isinstance(e, UnidentifiedImageError):
        return _first_line(e)  # "cannot identify image file '<path>'"
    if isinstance(e, (UndecodableDataError, InceptionWeightsError, ValueError)):
        return str(e)
    if isinstance(e, _USER_OS_ERRORS) or (isinstance(e, OSError) and e.errno in _USER_ERRNOS):
        return _describe_os_error(e)
    return None


def _describe_os_error(e: OSError) -> str:
    if e.filename is None:
        return str(e)
    if e.filename2 is not None:
        return f"{e.strerror}: {e.filename} -> {e.filename2}"
    return f"{e.strerror}: {e.filename}"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

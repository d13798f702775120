"""``blurdiff data toy|photos|export``: make the data sets (LSUN-format lmdbs) or write one as PNGs."""

from __future__ import annotations

import argparse
import sys

from blurdiff.cli import seed_type
from blurdiff.data import export_lmdb_to_folder
from blurdiff.photos import PhotosUnavailableError, make_photos_lmdb
from blurdiff.toy_data import make_toy_lmdb

HELP = "make or export data sets"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_subparsers(dest="data_command", required=True)
    toy = data.add_parser("toy", help="write a synthetic dead-leaves data set as an LSUN-format lmdb")
    toy.add_argument("--out", required=True, help="lmdb folder to create")
    toy.add_argument("--n", type=int, required=True, help="number of images")
    toy.add_argument("--size", type=int, required=True, help="image side in pixels")
    toy.add_argument("--seed", type=seed_type, default=0)
    toy.add_argument("--overwrite", action="store_true", help="replace an existing data set at --out")
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
    photos.add_argument("--seed", type=seed_type, default=0)
    photos.add_argument(
        "--split",
        choices=("train", "heldout"),
        default="train",
        help="train: crops that never touch the held-out quadrant of any photograph; heldout: "
        "crops inside it (for the quality yardstick; disjoint from train)",
    )
    photos.add_argument("--overwrite", action="store_true", help="replace an existing data set at --out")
    export = data.add_parser("export", help="write an lmdb (or image folder) as PNGs 000000.png … (for FID)")
    export.add_argument("--src", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--limit", type=int, default=None)
    export.add_argument("--size", type=int, default=None, help="resize to this side, without cropping")
    export.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    return {"toy": _toy, "photos": _photos, "export": _export}[args.data_command](args)


def _toy(args: argparse.Namespace) -> int:
    make_toy_lmdb(args.out, args.n, args.size, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.n} images of {args.size}x{args.size} to {args.out}")
    return 0


def _photos(args: argparse.Namespace) -> int:
    try:
        make_photos_lmdb(args.out, args.n, args.size, seed=args.seed, split=args.split, overwrite=args.overwrite)
    except PhotosUnavailableError as e:  # an optional extra: say what to install, no traceback
        print(f"blurdiff data: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} {args.split} crops of {args.size}x{args.size} to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    count = export_lmdb_to_folder(args.src, args.out, limit=args.limit, resolution=args.size, overwrite=args.overwrite)
    print(f"wrote {count} PNGs to {args.out}")
    return 0

"""``blurdiff figures forward``: the figures of the process (:mod:`blurdiff.figures`) as PNG files."""

from __future__ import annotations

import argparse

import blurdiff.figures
from blurdiff.cli import seed_type

HELP = "figures of the process (forward process on real images)"
DESCRIPTION = blurdiff.figures.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    figures = p.add_subparsers(dest="figure", required=True)
    fwd = figures.add_parser(
        "forward", help="the forward process on real images (noisy, and the means of both directions)"
    )
    fwd.add_argument("--data", required=True, help="LSUN-format lmdb or image folder")
    fwd.add_argument("--out", required=True, help="PNG file to write")
    fwd.add_argument(
        "--preset", required=True, help="experiment preset whose process to show (e.g. toy, lsun64-quartic)"
    )
    fwd.add_argument("--n", type=int, default=4, help="number of images (rows of three)")
    fwd.add_argument("--start", type=int, default=0, help="index of the first image in the data set")
    fwd.add_argument("--columns", type=int, default=8, help="time steps shown, t = 0 … N evenly spaced")
    fwd.add_argument("--seed", type=seed_type, default=0, help="seed of the noise in the x_t rows")
    fwd.add_argument("--normalize", action="store_true", help="divide the means by √ᾱ_t to show the blur alone")
    fwd.add_argument("--scale", type=int, default=None, help="pixel upscaling (default: cells of at least 64 px)")


def run(args: argparse.Namespace) -> int:  # "forward", the one figure
    out = blurdiff.figures.forward_process_figure(
        args.data,
        args.out,
        args.preset,
        n=args.n,
        start=args.start,
        columns=args.columns,
        seed=args.seed,
        normalize=args.normalize,
        scale=args.scale,
    )
    print(f"wrote {out}")
    return 0

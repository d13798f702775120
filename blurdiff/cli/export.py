"""``blurdiff export``: the options of :func:`blurdiff.export.export_run`, and what it wrote."""

from __future__ import annotations

import argparse

import blurdiff.export
from blurdiff.cli import add_checkpoint_arguments
from blurdiff.export import FORMATS, export_run

HELP = "export a run's weights (safetensors) and config (JSON) for sampling elsewhere"
DESCRIPTION = blurdiff.export.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(p, "is exported")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (new, empty, or an earlier export)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="blurdiff",
        help="blurdiff: DIR/model.safetensors and DIR/config.json (blurdiff sample --export DIR reads it); "
        "diffusers: BlurDiffusionPipeline.save_pretrained's folder (needs the blurdiff[diffusers] extra)",
    )


def run(args: argparse.Namespace) -> int:
    result = export_run(
        run=args.run, ckpt=args.ckpt, out=args.out, ema=not args.no_ema, overwrite=args.overwrite, format=args.format
    )
    print(
        f"exported {result.checkpoint} (step {result.step}, {'EMA' if result.ema else 'raw'} weights) "
        f"to {result.out} ({result.format} format):"
    )
    for path in result.files:
        print(f"  {path}")
    return 0

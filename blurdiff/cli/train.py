"""``blurdiff train`` (also ``python -m blurdiff.cli.train``, for ``torchrun -m``): the options of
:class:`blurdiff.train.TrainOptions`, and the run's last lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import blurdiff.train
from blurdiff.checkpoint import checkpoint_dir
from blurdiff.cli import add_setting_arguments, configure_logging, run_command, seed_type
from blurdiff.devices import AMP_DTYPES
from blurdiff.diffusion import BACKENDS
from blurdiff.presets import PRESETS
from blurdiff.train import NonFiniteLossError, train
from blurdiff.train_options import LR_SCHEDULES, TrainOptions

HELP = "train a blur-diffusion model"
DESCRIPTION = blurdiff.train.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="LSUN-format lmdb (folder with data.mdb) or a folder of images")
    p.add_argument("--preset", required=True, help=f"experiment preset: {', '.join(sorted(PRESETS))}")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, samples, config.json)")
    p.add_argument("--max-steps", type=int, required=True, help="train until this many optimizer steps in all")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (required when it has checkpoints); "
        "options not given again are taken from the run",
    )
    g = p.add_argument_group("optimisation (unset: the preset's, or the run's on --resume)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step PER PROCESS (under torchrun the global batch is this x processes)",
    )
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper: 5e-5)")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA decay per step (paper: 0.9999)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient to this L2 norm (0: off)")
    g.add_argument(
        "--warmup-steps", type=int, default=None, help="linear learning-rate warm-up over this many steps (0: off)"
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help="after the warm-up: constant (the paper's), or cosine (down to 0 at --max-steps; the toy preset's)",
    )
    g.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        default=None,
        help="mixed precision for the network: bf16, or fp16 with a GradScaler (CUDA only); default none",
    )
    g.add_argument(
        "--fused-adam",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Adam's fused kernel (CPU and CUDA): a faster step, equal to the default within rounding (default off)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the network under torch.compile (compiled on the first step: a minute on a CPU); equal to the "
        "default within rounding (default off)",
    )
    g.add_argument("--seed", type=seed_type, default=None, help="seed of weights, data order, t, noise (default 0)")
    g.add_argument("--resolution", type=int, default=None, help="train at this side instead of the preset's")
    add_setting_arguments(p)
    o = p.add_argument_group("checkpoints, logs, samples")
    o.add_argument("--ckpt-every", type=int, default=5000, help="checkpoint every K steps (and at the end)")
    o.add_argument("--keep", type=int, default=3, help="checkpoints kept (the newest; 0 keeps all)")
    o.add_argument("--sample-every", type=int, default=10000, help="EMA sample grid every K steps (0: never)")
    o.add_argument("--sample-n", type=int, default=16, help="images in a sample grid")
    o.add_argument("--log-every", type=int, default=100, help="a line of metrics.jsonl every K steps")
    o.add_argument(
        "--health-window",
        type=int,
        default=100,
        help="steps per window of the loss-spike detector (each window's mean loss and gradient "
        "norm against the median of the windows before)",
    )
    o.add_argument(
        "--no-final-check",
        dest="final_check",
        action="store_false",
        help="skip sampling a few EMA images at the end to check that they are in range",
    )
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    d = p.add_argument_group("hardware")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    d.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader worker processes per training process (default: 4 on CUDA, 0 on the CPU)",
    )
    d.add_argument(
        "--cache-mb",
        type=float,
        default=1024.0,
        help="keep the decoded training images in memory when they fit in this many MiB per process (0: off)",
    )
    d.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="process ops: fused kernels (auto: when built) or the plain-PyTorch reference",
    )


def run(args: argparse.Namespace) -> int:
    """``blurdiff train``: 0 when done, 2 for bad input, 3 when the loss went NaN/inf.

    Bad input is answered here, not only by :func:`blurdiff.cli.main`: ``python -m blurdiff.cli.train``
    does not go through it."""
    return run_command("train", _train, args)


def _train(args: argparse.Namespace) -> int:
    try:
        options = TrainOptions.from_args(args)
        trainer = train(options)
    except NonFiniteLossError as e:
        print(
            f"blurdiff train: error: {e}. The last good checkpoint (if any) in "
            f"{checkpoint_dir(args.out)} is intact; lower --lr or set --grad-clip and --resume.",
            file=sys.stderr,
        )
        return 3
    if trainer.is_main:
        print(f"trained {options.preset} to step {trainer.step}; checkpoints in {trainer.run_dir / 'checkpoints'}")
        healthy, text = trainer.verdict
        print(f"run {'healthy' if healthy else 'NOT HEALTHY'}: {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m blurdiff.cli.train ARGS`` (so ``torchrun --nproc-per-node G -m blurdiff.cli.train ARGS``):
    ``blurdiff train ARGS`` with a parser of its own."""
    parser = argparse.ArgumentParser(
        prog="blurdiff.cli.train", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    return run(args)


if __name__ == "__main__":  # `torchrun --nproc-per-node G -m blurdiff.cli.train ...`
    raise SystemExit(main())

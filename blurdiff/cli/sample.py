"""``blurdiff sample``: the options of :func:`blurdiff.sample_folder.sample_to_folder`, and what it did."""

from __future__ import annotations

import argparse
import sys

import blurdiff.sample_folder
from blurdiff.cli import add_checkpoint_arguments, add_setting_arguments, seed_type
from blurdiff.devices import AMP_DTYPES
from blurdiff.sample_folder import SamplingPlan, SamplingReport, sample_to_folder
from blurdiff.samplers import SAMPLERS, SPACINGS
from blurdiff.settings import SECTIONS, parse_settings

HELP = "sample a trained run (or an export) into a folder of PNGs"
DESCRIPTION = blurdiff.sample_folder.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(p, "is used")
    p.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="an export folder of `blurdiff export` instead of --run/--ckpt (the same images as its checkpoint)",
    )
    p.add_argument("--n", type=int, required=True, help="number of images (DIR/000000.png … )")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument(
        "--steps", metavar="K", type=int, default=None, help="sampling steps K, evenly spaced (default: all N)"
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="ddpm: Eq. 12, the paper's (the default with all N steps; only with all N); ancestral2m: "
        "second-order reverse-SDE integrator (the default with --steps); ancestral: first-order; "
        "ddim, ddim2m: deterministic (docs/sampling.md)",
    )
    p.add_argument(
        "--spacing",
        choices=SPACINGS,
        default=None,
        help="where the K kept steps lie: uniform in t, quadratic (denser near the data) or uniform in "
        "log-SNR (default: the best measured for the sampler, samplers.DEFAULT_SPACING)",
    )
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per batch (part of what determines the images, like --seed)"
    )
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA (an export: the ones it holds)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when available)")
    p.add_argument(
        "--backend",
        choices=("auto", "fused", "reference"),
        default="auto",
        help="spectral ops: compiled kernels (fused), plain PyTorch (reference), or auto",
    )
    p.add_argument("--preset", default=None, help="refuse a checkpoint trained with another preset")
    p.add_argument(
        "--trajectory",
        action="store_true",
        help="also write DIR/figures/trajectory.png and DIR/figures/trajectory_x0.png",
    )
    p.add_argument("--grid", action="store_true", help="also write DIR/figures/grid.png (the first 64 images)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the network under torch.compile: compiled once (tens of seconds on a CPU), then faster; "
        "samples equal within float rounding (the folder records it)",
    )
    p.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        default="none",
        help="the network in mixed precision: bf16 (fast on GPUs and CPUs with bf16 units) or fp16; samples "
        "equal float32's within its rounding (the folder records it)",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on a CUDA device: each batch's steps (network and op) captured once as a CUDA graph and "
        "replayed, for less launch overhead; the same images",
    )
    p.add_argument("--trajectory-samples", type=int, default=4, help="rows of the trajectory figures")
    p.add_argument("--trajectory-frames", type=int, default=10, help="columns of the trajectory figures")
    p.add_argument(
        "--npz",
        action="store_true",
        help="also write DIR/samples_NxHxWx3.npz (uint8, key arr_0: guided-diffusion's evaluator format)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_setting_arguments(p, sampling=True)


def run(args: argparse.Namespace) -> int:
    report = sample_to_folder(
        run=args.run,
        ckpt=args.ckpt,
        export=args.export,
        n=args.n,
        out=args.out,
        steps=args.steps,
        sampler=args.sampler,
        spacing=args.spacing,
        seed=args.seed,
        batch_size=args.batch_size,
        ema=False if args.no_ema else None,
        device=args.device,
        backend=args.backend,
        preset=args.preset,
        trajectory=args.trajectory,
        grid=args.grid,
        trajectory_samples=args.trajectory_samples,
        trajectory_frames=args.trajectory_frames,
        quiet=args.quiet,
        npz=args.npz,
        compile=args.compile,
        amp=args.amp,
        cuda_graph=args.cuda_graph,
        settings=parse_settings(args.set, args.config, sections=SECTIONS),
        on_plan=_print_plan,
    )
    _print_report(report)
    return 0


def _print_plan(plan: SamplingPlan) -> None:
    for advice in plan.advice:
        print(f"blurdiff sample: warning: {advice}", file=sys.stderr)
    print(
        f"{plan.checkpoint}{' (export)' if plan.export else ''}: step {plan.checkpoint_step}, "
        f"{'EMA' if plan.ema else 'raw'} weights; "
        f"{plan.sampler} sampler, {plan.steps}/{plan.num_timesteps} steps, batches of {plan.batch_size} on "
        f"{plan.device}; {plan.present} of {plan.n} images present, {plan.to_make} to make"
    )


def _print_report(report: SamplingReport) -> None:
    plan = report.plan
    rate = f", {report.written / report.seconds:.2f} img/s" if report.written and report.seconds > 0 else ""
    print(f"wrote {report.written} images to {report.out} ({plan.present} were already there){rate}")
    stats, data_std = report.raw, report.data_std
    if stats is not None:
        print(
            f"raw values (before the clamp to [-1, 1]): std {stats.summary()['overall_std']:.3f}"
            f"{f' (data {data_std:.3f})' if data_std else ''}, outside [-1, 1] "
            f"{100 * stats.outside_fraction:.2f}%, beyond ±1.5 {100 * stats.beyond_1_5_fraction:.3f}%, "
            f"range {stats.min:.3g} … {stats.max:.3g}"
            + (
                f" ({report.raw_unknown_batches} batches made by an older version not counted)"
                if report.raw_unknown_batches
                else ""
            )
        )
    if report.diverged:
        print(
            f"blurdiff sample: WARNING: these samples look DIVERGED ({'; '.join(report.diverged)}): checkpoint "
            f"{plan.checkpoint}, {plan.sampler} sampler with {plan.steps} steps. Do not use them; check the run's "
            f"metrics.jsonl for loss spikes, or try another checkpoint or sampler",
            file=sys.stderr,
        )
    if report.trajectory is not None:
        print(f"trajectory: {report.trajectory[0]}, {report.trajectory[1]}")
    if report.grid is not None:
        print(f"grid: {report.grid}")
    if report.npz is not None:
        print(f"npz: {report.npz}")

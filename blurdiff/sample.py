"""Sample a trained run into a folder of PNGs: ``blurdiff sample --run RUN --n N --out DIR``.

Images are ``DIR/000000.png``, ``000001.png``, … (index order), each written atomically (a
temporary file renamed into place), in the process's resolution. EMA weights by default.

Reproducible and resumable. Images are made in batches of ``--batch-size`` (always full
batches: the unused tail of the last one is dropped); batch ``b`` draws all its randomness from
a generator seeded by ``(seed, b's first index, batch size)``, so image ``i`` depends only on
the checkpoint, the seed, the batch size, the sampler and the backend/device, never on ``--n``
or on what ran before. A run that was interrupted continues where it stopped: batches whose
images all exist are skipped, existing files are never rewritten, and running again with a
larger ``--n`` adds images. ``DIR/sample.json`` records the settings; resuming with other
settings (another checkpoint, seed, batch size, sampler, steps, …) is refused.

``--trajectory`` also writes ``DIR/figures/trajectory.png`` (Figure 1: each row one sample, x_N … x_0
at evenly spaced kept steps) and ``DIR/figures/trajectory_x0.png`` (the predicted x̂_0 at the same
steps) for the first few images of batch 0 (the rows end with images 000000.png …). ``--grid``
writes ``DIR/figures/grid.png``, the first (up to 64) images of the folder in one picture.

Samplers (docs/sampling.md): ``ddpm`` (Eq. 12, the paper's; the default with all N steps, and
only with all N), ``ancestral2m`` (the second-order reverse-SDE integrator; the default with
``--steps K``), ``ancestral`` (first order), ``ddim`` and ``ddim2m`` (deterministic);
``--steps K`` keeps K of the N steps, placed by ``--spacing`` (default: the best for the kind).

Guarded: the statistics of the values before the clamp to [-1, 1] are recorded per batch
(``DIR/raw_stats.jsonl``), summed into ``DIR/stats.json`` (which ``blurdiff eval`` reads) and
printed; when they show divergence (non-finite values, more than 1 % beyond ±1.5, or a standard
deviation 3× the data's) a warning names the checkpoint and the sampler.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from blurdiff.atomic import file_sha256, remove_stale, write_text_atomic
from blurdiff.checkpoint import build_from_checkpoint, checkpoint_dir, load_checkpoint, resolve_checkpoint
from blurdiff.devices import resolve_device
from blurdiff.images import save_grid, save_png, save_strips, upscale_factor
from blurdiff.progress import Progress
from blurdiff.quality import SampleStats, divergence_reasons
from blurdiff.respace import KINDS, SPACINGS, make_sampler

SETTINGS_FILE = "sample.json"
RAW_STATS_FILE = "raw_stats.jsonl"  # one line per batch: the statistics of its values before the clamp
STATS_FILE = "stats.json"  # their sum over the batches of the images, and the divergence verdict
_FORMAT = 2  # 2: the integrators of docs/sampling.md §4-§6 (ancestral and ddim changed), spacing
FIGURES = "figures"  # a sub-folder, so image-folder readers (FID, spectra) see only the samples
_PNG = re.compile(r"^\d{6,}\.png$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    # dest is not "run": the CLI keeps the command's entry point in args.run.
    p.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN",
        default=None,
        help="run folder (its newest checkpoint is used unless --ckpt)",
    )
    p.add_argument(
        "--ckpt", metavar="FILE", default=None, help="checkpoint file (a path, or a file name inside RUN/checkpoints)"
    )
    p.add_argument("--n", type=int, required=True, help="number of images (DIR/000000.png … )")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument(
        "--steps", metavar="K", type=int, default=None, help="sampling steps K, evenly spaced (default: all N)"
    )
    p.add_argument(
        "--sampler",
        choices=KINDS,
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
        "log-SNR (default: the best measured for the sampler, respace.DEFAULT_SPACING)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per batch (part of what determines the images, like --seed)"
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
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
    p.add_argument("--trajectory-samples", type=int, default=4, help="rows of the trajectory figures")
    p.add_argument("--trajectory-frames", type=int, default=10, help="columns of the trajectory figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------- helpers
def image_name(index: int) -> str:
    return f"{index:06d}.png"


def batch_seed(seed: int, first: int, batch_size: int) -> int:
    """The seed of the batch that starts at image ``first`` (63 bits of a SHA-256)."""
    digest = hashlib.sha256(f"blurdiff-sample:{int(seed)}:{int(first)}:{int(batch_size)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _find_checkpoint(run: str | None, ckpt: str | None) -> Path:
    if run is None and ckpt is None:
        raise ValueError("give --run RUN (its newest checkpoint) or --ckpt FILE")
    if run is not None and not Path(run).is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    if ckpt is not None:
        path = Path(ckpt)
        if not path.is_file() and run is not None and (checkpoint_dir(run) / ckpt).is_file():
            path = checkpoint_dir(run) / ckpt
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt}")
        return path
    return resolve_checkpoint(run, None)


def _load(args, device: torch.device):
    """(checkpoint path, state, process, model) with clear errors for every wrong input."""
    path = _find_checkpoint(args.run_dir, args.ckpt)
    state = load_checkpoint(path)
    config = state.get("config")
    if not isinstance(config, dict) or not all(k in config for k in ("process", "unet")):
        raise ValueError(f"{path}: the checkpoint's config lacks the process/unet description")
    if args.preset is not None:
        from blurdiff.presets import get_preset

        get_preset(args.preset)  # an unknown name is its own error
        if config.get("preset") != args.preset:
            raise ValueError(f"{path} was trained with preset {config.get('preset')!r}, not --preset {args.preset!r}")
    which = "model" if args.no_ema else "ema"
    if not isinstance(state.get(which), dict) or not state[which]:
        raise ValueError(f"{path} holds no {which} weights" + ("" if args.no_ema else " (try --no-ema)"))
    try:
        process, model = build_from_checkpoint(
            state, use_ema=not args.no_ema, device=device, backend=args.backend, source=path
        )  # NaN or inf weights: a ValueError naming the file
        process.ops(device)  # backend='fused' without kernels fails here, not mid-run
    except (RuntimeError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: cannot build the model it describes: {e}") from e
    return path, state, process, model


def _resolved_backend(process, device: torch.device) -> str:
    import blurdiff_ops

    return "reference" if process.ops(device) is blurdiff_ops.reference else "fused"


def _check_settings(out: Path, settings: dict) -> None:
    """Write ``DIR/sample.json``, or check that an existing one agrees with ``settings``."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is unreadable ({e}); remove it or pick another --out") from e
        diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise ValueError(
                f"{out} already holds samples made with other settings ({'; '.join(diff)}). Repeat "
                f"those settings to continue, or pick another --out"
            )
        return
    if any(_PNG.match(p.name) for p in out.iterdir()):
        raise ValueError(
            f"{out} already holds numbered PNGs but no {SETTINGS_FILE}: not a folder this "
            f"command made; pick another --out"
        )
    write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


class _Trajectory:
    """Records x_s and x̂_0 for the first rows at evenly spaced kept steps."""

    def __init__(self, sampler, rows: int, frames: int):
        self.sampler, self.rows = sampler, rows
        steps = sampler.steps
        n = max(1, min(frames - 1, len(steps)))
        picks = sorted({round(k * (len(steps) - 1) / max(n - 1, 1)) for k in range(n)})
        self.at = {steps[k] for k in picks}
        self.x: list[torch.Tensor] = []
        self.x0: list[torch.Tensor] = []

    def __call__(self, step: int, x: torch.Tensor, eps: torch.Tensor) -> None:
        if step in self.at:
            x, eps = x[: self.rows], eps[: self.rows]
            self.x.append(x.detach().float().cpu())
            t = torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)
            self.x0.append(self.sampler.process.predict_x0(x, eps, t).float().cpu())

    def save(self, out: Path, final: torch.Tensor) -> None:
        final = final[: self.rows].detach().float().cpu()
        out.mkdir(exist_ok=True)
        save_strips(_upscale(self.x + [final]), out / "trajectory.png")
        save_strips(_upscale(self.x0 + [final]), out / "trajectory_x0.png")


def _upscale(frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """Nearest-neighbour upscaling for figures (see :func:`blurdiff.images.upscale_factor`)."""
    s = upscale_factor(max(frames[0].shape[-2:]))
    return [f.repeat_interleave(s, -2).repeat_interleave(s, -1) for f in frames]


def _is_complete_png(path: Path) -> bool:
    """A PNG that was written to the end (its last chunk is IEND); a missing, empty or torn file
    (a crash, a full disk) is made again."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 20:
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12) == _IEND
    except (FileNotFoundError, IsADirectoryError):
        return False


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class _RawStats:
    """Per-batch :class:`SampleStats` of the values before the clamp, appended to a JSON-lines file
    (a batch sampled again replaces its line: the same images, the same numbers)."""

    def __init__(self, path: Path):
        self.path = path
        self.batches: dict[int, SampleStats] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.batches[int(entry["batch"])] = SampleStats(**entry["stats"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that batch is sampled again or counted as unknown

    def record(self, batch: int, stats: SampleStats) -> None:
        self.batches[batch] = stats
        with open(self.path, "a") as f:
            f.write(json.dumps({"batch": batch, "stats": stats.to_dict()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def total(self, batches) -> tuple[SampleStats, int]:
        """The merged statistics of ``batches`` and how many of them have none (made by a version
        that did not record them)."""
        merged, unknown = SampleStats(), 0
        for b in batches:
            if b in self.batches:
                merged = merged.merge(self.batches[b])
            else:
                unknown += 1
        return merged, unknown


def _report_raw_stats(raw: _RawStats, batches, out: Path, ckpt: Path, sampler, process) -> None:
    """Print the raw statistics of the folder's batches, warn when they show divergence, and write
    ``DIR/stats.json`` (read by ``blurdiff eval``)."""
    stats, unknown = raw.total(batches)
    if not stats.count:
        return
    data_stats = process.data_stats
    data_std = data_stats.std if data_stats is not None else None
    reasons = divergence_reasons(stats, data_std)
    summary = stats.summary()
    print(
        f"raw values (before the clamp to [-1, 1]): std {summary['overall_std']:.3f}"
        f"{f' (data {data_std:.3f})' if data_std else ''}, outside [-1, 1] {100 * stats.outside_fraction:.2f}%, "
        f"beyond ±1.5 {100 * stats.beyond_1_5_fraction:.3f}%, range {stats.min:.3g} … {stats.max:.3g}"
        + (f" ({unknown} batches made by an older version not counted)" if unknown else "")
    )
    if reasons:
        print(
            f"blurdiff sample: WARNING: these samples look DIVERGED ({'; '.join(reasons)}): checkpoint {ckpt}, "
            f"{sampler.kind} sampler with {sampler.K} steps. Do not use them; check the run's metrics.jsonl for "
            f"loss spikes, or try another checkpoint or sampler",
            file=sys.stderr,
        )
    write_text_atomic(
        out / STATS_FILE,
        json.dumps(
            {
                "checkpoint": str(ckpt),
                "sampler": sampler.kind,
                "steps": sampler.K,
                "batches_unknown": unknown,
                "raw": stats.to_dict(),
                "summary": summary,
                "data_std": data_std,
                "diverged": bool(reasons),
                "reasons": reasons,
            },
            indent=2,
        )
        + "\n",
    )


# ------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.trajectory and (args.trajectory_samples < 1 or args.trajectory_frames < 2):
        raise ValueError("--trajectory-samples must be >= 1 and --trajectory-frames >= 2")
    device = resolve_device(args.device)
    path, state, process, model = _load(args, device)
    with warnings.catch_warnings(record=True) as caught:  # said once below, not as a Python warning
        warnings.simplefilter("always")
        sampler = make_sampler(process, args.steps, args.sampler, args.spacing)
    for w in caught:
        print(f"blurdiff sample: warning: {w.message}", file=sys.stderr)
    B = args.batch_size
    shape = (B, model.config.in_channels, *process.resolution)

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(
        out,
        {
            "format": _FORMAT,
            "checkpoint_sha256": file_sha256(path),
            "checkpoint_step": int(state["step"]),
            "preset": state["config"].get("preset"),
            "ema": not args.no_ema,
            "sampler": sampler.kind,
            "steps": sampler.K,
            "spacing": sampler.spacing,
            "seed": args.seed,
            "batch_size": B,
            "backend": _resolved_backend(process, device),
            "device": device.type,
            "resolution": list(process.resolution),
        },
    )
    remove_stale(out, "*.png")  # leftovers of an interrupted write: never final names

    num_batches = -(-args.n // B)
    missing = {
        b: [i for i in range(b * B, min((b + 1) * B, args.n)) if not _is_complete_png(out / image_name(i))]
        for b in range(num_batches)
    }
    todo = [b for b in range(num_batches) if missing[b]]
    if args.trajectory and 0 not in todo:
        todo.insert(0, 0)  # batch 0 again (the same images), only to record its trajectory
    total = sum(len(missing[b]) for b in todo)
    present = args.n - sum(len(v) for v in missing.values())
    print(
        f"{path}: step {state['step']}, {'EMA' if not args.no_ema else 'raw'} weights; "
        f"{sampler.kind} sampler, {sampler.K}/{process.steps} steps, batches of {B} on {device}; "
        f"{present} of {args.n} images present, {total} to make"
    )

    t0 = time.perf_counter()
    written = 0
    raw = _RawStats(out / RAW_STATS_FILE)
    with Progress(total, "sampling", unit="img", enabled=not args.quiet) as bar:
        for n_batch, b in enumerate(todo):
            first = b * B
            gen = torch.Generator(device=device)
            gen.manual_seed(batch_seed(args.seed, first, B))
            record = (
                _Trajectory(sampler, min(args.trajectory_samples, B), args.trajectory_frames)
                if args.trajectory and b == 0
                else None
            )

            def callback(step, x, eps, record=record, n_batch=n_batch):
                if record is not None:
                    record(step, x, eps)
                bar.update(
                    0, batch=f"{n_batch + 1}/{len(todo)}", step=f"{sampler.K - sampler.position(step) + 1}/{sampler.K}"
                )

            x = sampler.sample(model, shape, generator=gen, device=device, callback=callback, guard=False)
            raw.record(b, SampleStats.of(x))  # before the PNGs: a batch with images has its statistics
            for i in missing[b]:
                save_png(x[i - first], out / image_name(i))
            if record is not None:
                record.save(out / FIGURES, x)
            written += len(missing[b])
            bar.update(len(missing[b]))
    elapsed = time.perf_counter() - t0
    rate = f", {written / elapsed:.2f} img/s" if written and elapsed > 0 else ""
    print(f"wrote {written} images to {out} ({present} were already there){rate}")
    _report_raw_stats(raw, range(num_batches), out, path, sampler, process)
    if args.trajectory:
        print(f"trajectory: {out / FIGURES / 'trajectory.png'}, {out / FIGURES / 'trajectory_x0.png'}")
    if args.grid:
        (out / FIGURES).mkdir(exist_ok=True)
        from blurdiff.spectrum import load_images  # the image reading shared with FID and spectra

        images = load_images([out / image_name(i) for i in range(min(args.n, 64))], out).float()
        save_grid(_upscale([images])[0], out / FIGURES / "grid.png")
        print(f"grid: {out / FIGURES / 'grid.png'}")
    return 0

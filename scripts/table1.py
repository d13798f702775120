"""Table 1 in miniature: quartic blur, log blur and no blur, trained alike on photo crops and scored.

    python scripts/table1.py --out DIR [--seeds 0 1 2] [--steps 1000] [--resolution 32] [--n 32]
        [--settings quartic log noblur] [--paper-blur] [--threads T] [--estimate-only]

Trains the presets ``photos32-quartic``, ``photos32-log``, ``photos32-noblur`` for every seed, samples
each run with Eq. 12 (all N steps) and with ``ancestral2m`` (``--fast-steps``), and scores it against
held-out crops (``blurdiff.quality.evaluate``; FID when the Inception weights are present): the README's
"Natural images, and Table 1 in miniature", docs/presets.md (photos32). Also per run, ``dc_gain``: the
network's gain on the mean frequency at t = N, about 1 when right (below 1/2 Eq. 12 blows brightness up).

Writes, in DIR: ``table.md`` (mean ± std over seeds per setting and sampler), ``results.json`` (every
number), ``figure.png`` (sample grids per setting and sampler, radial power spectra against the
held-out data's), and the work: ``data/`` (the two lmdbs), ``runs/SETTING-seedS/`` (training runs),
``results/SETTING-seedS/SAMPLER/`` (a folder of ``blurdiff sample``'s PNGs and ledger; ``score.json``),
``plan.json``.

Resumable: run the same command again. Trainings resume from their newest checkpoint, sample
batches and scores already made are kept (keyed by the checkpoint they come from), finished work is
not redone. ``--seeds``/``--settings`` may change between calls; every other option must stay the
same (``plan.json``). Calls on disjoint runs may work in one DIR at the same time (a run another call
trains is skipped, its run folder locked); a final call with every seed and setting writes the whole
table and figure. Before working it times the network here and prints an estimate, then progress
and an ETA after every task; ``--estimate-only`` prints the estimate and stops. The defaults take
about 2 h 10 min on two idle cores (per run: 9 min of training, 5.5 min of sampling).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

import blurdiff_ops
from blurdiff.atomic import atomic_path, write_text_atomic
from blurdiff.checkpoint import latest_checkpoint, load_newest_readable
from blurdiff.data import export_lmdb_to_folder
from blurdiff.diffusion import BlurDiffusion, ProcessConfig
from blurdiff.fid import fid_report
from blurdiff.images import font, grid, load_images, save_png, upscale_factor
from blurdiff.inception import InceptionWeightsError, default_weights_path, resolve_weights_path
from blurdiff.photos import make_photos_lmdb
from blurdiff.presets import get_preset
from blurdiff.quality import evaluate, load_data_images
from blurdiff.run_folder import RunInUseError
from blurdiff.sample_folder import (
    OtherSettingsError,
    SampleLedger,
    complete_images,
    image_name,
    load_source,
    sample_into,
)
from blurdiff.sample_guard import SETTINGS_FILE, SampleStats
from blurdiff.samplers import make_sampler
from blurdiff.schedules import PAPER_F_MAX
from blurdiff.spectrum import plot_spectra, radial_power_spectrum
from blurdiff.toy_data import make_toy_lmdb
from blurdiff.train import NonFiniteLossError, train
from blurdiff.train_options import TrainOptions
from blurdiff.unet import build_unet


class Experiment:
    """What is compared: rows (setting -> preset, trained alike), on which data (``photos`` crops or
    ``toy`` images, at the presets' resolution by default), and whether the paper's blur f(N) of the
    lee rows is rescaled to the same physical blur at another resolution (this script's Table 1) or
    the presets are run as they are (scripts/head_to_head.py)."""

    def __init__(self, title: str, rows: dict[str, str], data: str = "photos", scale_blur: bool = True):
        self.title, self.rows, self.data, self.scale_blur = title, dict(rows), data, scale_blur

    @property
    def resolution(self) -> int:
        return get_preset(next(iter(self.rows.values()))).process.resolution[0]


SETTINGS = {"quartic": "photos32-quartic", "log": "photos32-log", "noblur": "photos32-noblur"}
TABLE1 = Experiment("Table 1 in miniature: photo crops", SETTINGS)
SAMPLERS = ("eq12", "fast")
_SAMPLER_LABEL = {"eq12": "Eq. 12", "fast": "few-step"}
_METRICS = ("swd_avg", "spectrum_error", "spectrum_error_high")
PLAN = "plan.json"
_FORMAT = 1
# Plan fields that must stay the same between calls on one DIR (seeds and settings may change).
_PLAN_KEYS = (
    "resolution steps n sample_batch fast_steps num_timesteps train_images heldout_images data_seed eval_seed "
    "paper_blur ckpt_every"
).split()
TRAIN_OVERHEAD = 1.1  # data loading, EMA, checkpoints, logging beside the timed steps (measured: ~1.05-1.1)


def parse_args(argv=None, experiment: Experiment = TABLE1, description: str = __doc__) -> argparse.Namespace:
    res = experiment.resolution
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="experiment folder (made if absent; resumed if it holds plan.json)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (= data order seeds)")
    rows = experiment.rows
    p.add_argument("--settings", nargs="+", choices=sorted(rows), default=list(rows), help="rows of the table to run")
    for flag, default, text in (
        ("--steps", 1000, "optimizer steps per training run"),
        ("--resolution", res, f"image side (the presets are {res}; others for tests)"),
        ("--n", 32, "images sampled per run and sampler (at least 16)"),
        ("--sample-batch", 32, "images per sampling pass (fixes the noise drawn)"),
        ("--fast-steps", 50, "steps K of the few-step sampler"),
        ("--num-timesteps", None, "the process's N (default: the preset's 1000; smaller only for tests)"),
        ("--train-images", 20000, "crops in the training lmdb"),
        ("--heldout-images", 1024, "crops in the held-out lmdb (at least 2n)"),
        ("--data-seed", 0, "seed of the photo crops"),
        ("--eval-seed", 0, "seed of the yardstick (data subsets, patches, projections)"),
    ):
        p.add_argument(flag, type=int, default=default, help=text)
    p.add_argument(
        "--paper-blur",
        action="store_true",
        help="use the paper's f(N) unscaled (0.140625, 0.6) instead of the same physical blur as at 64x64",
    )
    p.add_argument("--ckpt-every", type=int, default=250, help="checkpoint every K training steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache)")
    p.add_argument("--no-fid", action="store_true", help="skip FID even when the weights are present")
    p.add_argument("--estimate-only", action="store_true", help="time the network here, print the estimate and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the progress lines stay)")
    args = p.parse_args(argv)
    args.experiment = experiment
    if args.n < 16:
        p.error("--n must be at least 16 (the yardstick's minimum)")
    if args.heldout_images < 2 * args.n:
        p.error(f"--heldout-images must be at least 2n = {2 * args.n} (a reference set and a noise-floor set)")
    N = num_timesteps(args)
    if N < 2:
        p.error("--num-timesteps must be at least 2")
    if not 1 <= args.fast_steps < N:
        p.error(f"--fast-steps must lie in 1 … {N - 1} (below the process's N = {N})")
    for name in ("steps", "sample_batch", "train_images", "ckpt_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    args.seeds = list(dict.fromkeys(args.seeds))
    args.settings = list(dict.fromkeys(args.settings))
    return args


def first_preset(args) -> str:
    """The first row's preset: the network, optimiser and N every row shares (timed by the benchmark)."""
    return next(iter(args.experiment.rows.values()))


def num_timesteps(args) -> int:
    return args.num_timesteps or get_preset(first_preset(args)).process.num_timesteps


def plan_of(args) -> dict[str, Any]:
    return {"format": _FORMAT, **{k: getattr(args, k) for k in _PLAN_KEYS}}


def check_plan(out: Path, args) -> None:
    """Write DIR/plan.json, or check that the one there agrees; refuse a foreign non-empty DIR."""
    path, plan = out / PLAN, plan_of(args)
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} there, {plan[k]!r} now" for k in plan if old.get(k) != plan[k]]
        if diff:
            raise SystemExit(
                f"table1: {out} holds an experiment with other settings ({'; '.join(diff)}); "
                f"repeat them to resume it, or choose another --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise SystemExit(
            f"table1: {out} is not empty and holds no {PLAN}: not an experiment of this script; "
            f"choose a new or empty --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(plan, indent=2) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class Run:
    """One training run (setting, seed) and where its work lives (``results / SAMPLER``: its samples)."""

    def __init__(self, out: Path, setting: str, seed: int, args):
        self.setting, self.seed, self.args = setting, seed, args
        self.name, self.preset = f"{setting}-seed{seed}", args.experiment.rows[setting]
        self.run_dir, self.results = out / "runs" / self.name, out / "results" / self.name
        self.train_file = self.results / "train.json"

    def process(self) -> ProcessConfig:
        return dataclasses.replace(get_preset(self.preset).process, **process_overrides(self.preset, self.args))

    def trained(self) -> dict[str, Any] | None:
        """train.json when the run is finished (at --steps), else None."""
        info = _read_json(self.train_file)
        return info if info and info.get("steps") == self.args.steps else None

    def steps_done(self) -> int:
        if self.trained():
            return self.args.steps
        ckpt = latest_checkpoint(self.run_dir)
        return min(int(ckpt.stem.split("-")[1]), self.args.steps) if ckpt is not None else 0

    def images_done(self, sampler: str) -> set[int]:
        """The complete images of a sample folder, if they come from the final checkpoint."""
        settings, train = _read_json(self.results / sampler / SETTINGS_FILE), self.trained()
        if not settings or not train or settings.get("checkpoint_step") != train.get("step"):
            return set()
        return complete_images(self.results / sampler, self.args.n)


def process_overrides(preset_name: str, args) -> dict[str, Any]:
    """The process changes a run makes to its preset: N for tests, and for the paper's process in
    Table 1 f(N) for another resolution (the same physical blur: the paper's f(N) x (resolution/64)^2)
    or the paper's unscaled."""
    preset = get_preset(preset_name)
    out: dict[str, Any] = {}
    if args.num_timesteps is not None and args.num_timesteps != preset.process.num_timesteps:
        out["num_timesteps"] = args.num_timesteps
    if not args.experiment.scale_blur or preset.process.family != "lee":
        return out
    paper = PAPER_F_MAX[preset.process.blur_schedule]
    f_max = paper if args.paper_blur else paper * (args.resolution / 64) ** 2
    if not math.isclose(f_max, preset.process.f_max, rel_tol=1e-12, abs_tol=0.0):
        out["f_max"] = f_max
    return out


class Clock:
    """Seconds per unit of each kind of work (``rate``): the benchmark's, then the mean the work measures."""

    def __init__(self):
        self.rate: dict[str, float] = {}
        self.measured: dict[str, tuple[float, float]] = {}  # kind -> (seconds, units) so far
        self.start = time.perf_counter()

    def record(self, kind: str, seconds: float, units: float) -> None:
        total = self.measured.get(kind, (0.0, 0.0))
        self.measured[kind] = (total[0] + seconds, total[1] + units)
        self.rate[kind] = self.measured[kind][0] / self.measured[kind][1]

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def estimate(clock: Clock, units: dict[str, float]) -> float:
    """Seconds of the work ``units`` (kind -> units) at the clock's rates."""
    return sum(clock.rate.get(kind, 0.0) * u for kind, u in units.items())


def hms(seconds: float) -> str:
    s = int(round(max(seconds, 0)))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _seconds_per_call(fn, warmup: int = 0, repeats: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def benchmark(args, clock: Clock) -> None:
    """Time a few training steps (batch, optimizer, EMA) and sampling passes of the presets' network
    at this resolution, and one scoring, on random data: the rates the estimate starts from."""
    preset = get_preset(first_preset(args))
    res = args.resolution
    process = BlurDiffusion(dataclasses.replace(preset.process, resolution=res, **process_overrides(preset.name, args)))
    torch.manual_seed(0)
    model = build_unet(preset.unet, **dict(preset.unet_overrides, image_size=res))
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    x = torch.rand(preset.batch_size, 3, res, res) * 2 - 1

    def train_step():
        opt.zero_grad(set_to_none=True)
        process.training_loss(model, x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        opt.step()
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1e-3)

    clock.rate["train_step"] = TRAIN_OVERHEAD * _seconds_per_call(train_step, warmup=2, repeats=5)
    model.eval()
    b = min(args.sample_batch, args.n)
    xs = torch.randn(b, 3, res, res)
    t = torch.full((b,), process.num_timesteps // 2, dtype=torch.int64)
    with torch.no_grad():
        clock.rate["sample_image_step"] = _seconds_per_call(lambda: model(xs, t), warmup=1, repeats=3) / b
    data = torch.rand(2 * args.n, 3, res, res) * 2 - 1
    clock.rate["score"] = _seconds_per_call(lambda: evaluate(data[: args.n].clone(), data, seed=0))
    clock.rate["data_image"] = 2.5e-3  # measured: ~2.5 ms per crop (decode once, crop, resize, webp)


def work_left(runs: list[Run], args, N: int, data_left: int) -> dict[str, float]:
    """Units of each kind of work not done yet."""
    steps = samples = scores = 0
    for run in runs:
        steps += args.steps - run.steps_done()
        if (run.trained() or {}).get("failed"):
            continue  # diverged in training: nothing to sample
        for sampler in SAMPLERS:
            K = N if sampler == "eq12" else args.fast_steps
            done = run.images_done(sampler)
            samples += K * args.sample_batch * len({i // args.sample_batch for i in range(args.n) if i not in done})
            scores += 0 if _read_json(run.results / sampler / "score.json") else 1
    return {"train_step": steps, "sample_image_step": samples, "score": scores, "data_image": data_left}


def full_work(args, runs: list[Run], N: int) -> dict[str, float]:
    """Units of each kind of work of the whole experiment."""
    return {
        "train_step": len(runs) * args.steps,
        "sample_image_step": len(runs) * (N + args.fast_steps) * args.n,
        "score": len(runs) * len(SAMPLERS) + 1,
        "data_image": args.train_images + args.heldout_images,
    }


def print_estimate(clock: Clock, args, runs: list[Run], N: int, left: dict[str, float]) -> None:
    rate = clock.rate
    print(
        f"timing on this machine ({torch.get_num_threads()} torch threads): a training step "
        f"{1e3 * rate['train_step']:.0f} ms (batch {get_preset(first_preset(args)).batch_size}), a sampling "
        f"step {1e3 * rate['sample_image_step'] * args.n:.0f} ms ({args.n} images), a scoring "
        f"{rate['score']:.1f} s\n"
        f"estimate per run: training {hms(rate['train_step'] * args.steps)} ({args.steps} steps), sampling "
        f"{hms(rate['sample_image_step'] * (N + args.fast_steps) * args.n)} "
        f"(Eq. 12: {N} steps, fast: {args.fast_steps} steps, {args.n} images each)\n"
        f"estimate of the whole experiment ({len(runs)} runs): {hms(estimate(clock, full_work(args, runs, N)))}; "
        f"left to do: {hms(estimate(clock, left))}",
        flush=True,
    )


def ensure_data(out: Path, args, clock: Clock) -> tuple[Path, Path]:
    train_dir, heldout_dir, res = out / "data" / "train", out / "data" / "heldout", args.resolution
    for path, n, split in ((train_dir, args.train_images, "train"), (heldout_dir, args.heldout_images, "heldout")):
        if (path / "data.mdb").is_file():
            continue  # written atomically: present means complete
        t0 = time.perf_counter()
        if args.experiment.data == "toy":  # held-out: the images of another seed
            make_toy_lmdb(path, n, res, seed=2 * args.data_seed + (split == "heldout"))
        else:
            make_photos_lmdb(path, n, res, seed=args.data_seed, split=split)
        seconds = time.perf_counter() - t0
        clock.record("data_image", seconds, n)
        print(f"data: wrote {n} {split} images of {res}x{res} to {path} ({seconds:.0f} s)", flush=True)
    return train_dir, heldout_dir


def train_run(run: Run, train_data: Path, args) -> dict[str, Any]:
    preset = get_preset(run.preset)
    options = TrainOptions(
        data=str(train_data),
        preset=run.preset,
        out=str(run.run_dir),
        max_steps=args.steps,
        resume=True,
        seed=run.seed,
        resolution=args.resolution if args.resolution != preset.process.resolution[0] else None,
        process_overrides=process_overrides(run.preset, args),
        ckpt_every=args.ckpt_every,
        keep=2,
        sample_every=0,
        log_every=50,
        final_check=(args.num_timesteps or preset.process.num_timesteps) >= 50,
        device="cpu",
        progress=not args.quiet,
    )
    start_step = run.steps_done()
    t0 = time.perf_counter()
    try:
        trainer = train(options)
        healthy, verdict = trainer.verdict
        info = {"steps": args.steps, "step": trainer.step, "healthy": healthy, "verdict": verdict}
    except NonFiniteLossError as e:
        info = {"steps": args.steps, "step": e.step - 1, "healthy": False, "failed": str(e)}
    info.update(
        seconds=time.perf_counter() - t0,
        steps_this_call=args.steps - start_step,
        preset=run.preset,
        process_overrides=process_overrides(run.preset, args),
        seed=run.seed,
    )
    _write_json(run.train_file, info)
    return info


def load_run(run: Run):
    found = load_newest_readable(run.run_dir)
    if found is None:
        raise FileNotFoundError(f"{run.run_dir} has no checkpoint to sample")
    path, state = found
    return state, load_source(None, path, None, None, None, "auto", torch.device("cpu"))


def dc_gain(run: Run, loaded, heldout: torch.Tensor, args) -> float:
    """The network's gain on the mean (coarsest) frequency at t = N, cached per checkpoint.

    The regression slope of that coefficient of ε̂(x_N, N) on the same coefficient of x_N, for x_N
    made from held-out images: the right answer is about 1 (x_N is almost pure noise). Eq. 12 keeps
    that frequency's variance near 1/(2 (gain - 1/2)) at large t and lets it grow without bound
    below 1/2: brightness blown up, saturated colour fields (see the photos32 presets' notes).
    """
    state, source = loaded
    process, model = source.process, source.model
    file = run.results / "diagnostics.json"
    key = {"checkpoint_step": int(state["step"]), "checksum": state.get("checksum"), "n": args.n}
    cached = _read_json(file)
    if cached and cached.get("key") == key:
        return cached["dc_gain"]
    x0 = heldout[: args.n]
    t = torch.full((x0.shape[0],), process.num_timesteps, dtype=torch.int64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    tab = process.tables("cpu", torch.float32)
    with torch.no_grad():
        x_t = process.q_sample(x0, t, noise=noise)
        eps = model(x_t, t)
        e = blurdiff_ops.to_spectral(eps, tab["U_h"], tab["U_w"])[..., 0, 0]
        x = blurdiff_ops.to_spectral(x_t, tab["U_h"], tab["U_w"])[..., 0, 0]
    gain = float((e * x).sum() / (x * x).sum())
    _write_json(file, {"key": key, "dc_gain": gain})
    return gain


def sample_run(run: Run, sampler_name: str, loaded, args, clock: Clock, report):
    """The run's ``n`` samples with one sampler (a folder of blurdiff.sample_folder's ledger: batches
    kept as they are made; the same noise for every setting of a seed), their raw statistics and
    what they were made with."""
    state, source = loaded
    sampler = make_sampler(source.process) if sampler_name == "eq12" else make_sampler(source.process, args.fast_steps)
    folder = run.results / sampler_name
    cpu = torch.device("cpu")
    try:
        ledger = SampleLedger(folder, args.n, source, sampler, run.seed, args.sample_batch, cpu)
    except OtherSettingsError:  # samples of another checkpoint or sampler: made again (any other error stops)
        shutil.rmtree(folder)
        ledger = SampleLedger(folder, args.n, source, sampler, run.seed, args.sample_batch, cpu)
    t0 = [time.perf_counter()]

    def on_batch(b: int, written: int) -> None:
        seconds, t0[0] = time.perf_counter() - t0[0], time.perf_counter()
        clock.record("sample_image_step", seconds, args.sample_batch * sampler.K)
        report(
            f"sampled {run.name} {sampler_name} ({sampler.name}, {sampler.K} steps) batch {b + 1}/"
            f"{ledger.num_batches}: {written} images in {hms(seconds)}"
        )

    sample_into(ledger, sampler, source.model, quiet=args.quiet, on_batch=on_batch)
    images = load_images([folder / image_name(i) for i in range(args.n)], folder).float()
    raw, _ = ledger.raw.total(range(ledger.num_batches))
    return images, raw, {**ledger.settings, "n": args.n}


def cached_score(file: Path, meta: dict[str, Any], fid: Fid, folder: Path, make_report) -> dict[str, Any]:
    """The score in ``file`` when it is of ``meta`` (with its FID, where FID can be had); else made
    (``make_report()``: the yardstick's report) or given the FID of the PNGs in ``folder``, and kept."""
    result = _read_json(file)
    if not result or result.get("meta") != meta:
        result = {"meta": meta, "report": make_report(), "fid": None}
    elif result.get("fid") is not None or not fid.available:
        return result
    if fid.available:
        result["fid"] = fid.of(folder)
    _write_json(file, result)
    return result


def score(run: Run, sampler: str, samples, raw: SampleStats, heldout, meta, args, clock: Clock, fid: Fid):
    """The run's samples with one sampler scored (its ``score.json``), timed on the clock."""

    def report() -> dict[str, Any]:
        t0 = time.perf_counter()
        result = evaluate(samples, heldout[: 2 * args.n], raw_stats=raw, seed=args.eval_seed)
        clock.record("score", time.perf_counter() - t0, 1)
        return result

    return cached_score(run.results / sampler / "score.json", meta, fid, run.results / sampler, report)


def reference_score(out: Path, train_dir: Path, heldout: torch.Tensor, args, fid: Fid) -> dict[str, Any]:
    """Training crops scored against held-out crops: what a perfect model of the training split scores."""
    images = load_data_images(train_dir, args.resolution, args.n, seed=args.eval_seed + 1)
    folder = out / "results" / "train_reference_png"
    if fid.available:
        folder.mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(images):
            if not (folder / image_name(i)).is_file():
                save_png(x, folder / image_name(i))
    meta = {"n": args.n, "eval_seed": args.eval_seed}
    report = functools.partial(evaluate, images, heldout[: 2 * args.n], seed=args.eval_seed)
    return cached_score(out / "results" / "train_reference.json", meta, fid, folder, report)


class Fid:
    """FID against every held-out crop, when the standard Inception weights are here; else skipped."""

    def __init__(self, out: Path, heldout_dir: Path, args):
        self.available, self.note = False, "FID skipped (--no-fid)"
        if args.no_fid:
            return
        try:
            self.weights = resolve_weights_path(args.fid_weights)
        except FileNotFoundError:
            where = args.fid_weights or default_weights_path()
            self.note = (
                f"FID skipped: the standard Inception weights are not at {where} (pass --fid-weights FILE "
                f"or put pt_inception-2015-12-05-6726825d.pth there; nothing is downloaded)"
            )
            return
        self.available = True
        self.real, self.heldout_dir, self.cache = out / "data" / "heldout_png", heldout_dir, out / "fid_cache"
        self.note = (
            f"FID: {args.n} samples against all {args.heldout_images} held-out crops, Inception weights "
            f"{self.weights}; on so few samples it is biased upwards (not comparable with FID-10K)"
        )

    def of(self, folder: Path) -> float | None:
        """FID of the PNGs in ``folder``; None, and FID off from here on with the reason in the note,
        when the weights turn out unusable."""
        if not self.real.is_dir():
            export_lmdb_to_folder(self.heldout_dir, self.real)
        try:
            return float(fid_report(self.real, folder, weights=self.weights, device="cpu", cache_dir=self.cache).fid)
        except (InceptionWeightsError, OSError, ValueError) as e:
            self.available = False
            self.note = f"FID skipped: {str(e).splitlines()[0]}"
            print(self.note, flush=True)
            return None


def _stats(values: list[float]) -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "—"
    if len(v) == 1:
        return f"{v[0]:.3g}"
    return f"{np.mean(v):.3g} ± {np.std(v, ddof=1):.2g}"


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _score_cells(scores: list[dict[str, Any]], note: str = "") -> list[str]:
    """The table's cells of the scores of one row (one per seed): the metrics, std, verdicts + note, FID."""
    m = [c["report"]["metrics"] for c in scores]
    return [
        *(_stats([x[k]["samples"] for x in m]) for k in _METRICS),
        _stats([c["report"]["raw"]["overall_std"] for c in scores]),
        " ".join(c["report"]["verdict"] for c in scores) + note,
        _stats([c.get("fid") for c in scores]),
    ]


def write_table(out: Path, args, runs: list[Run], results, reference, fid: Fid, N: int, clock, data_std, gains) -> Path:
    """DIR/table.md from ``results`` ((setting, seed, sampler) -> score), the training crops'
    ``reference`` score (or None), and ``gains`` ((setting, seed) -> dc_gain)."""
    preset = get_preset(first_preset(args))
    held_out = (
        "toy images (another seed than training's; "
        if args.experiment.data == "toy"
        else "crops (a quadrant of every photograph that training never sees; "
    )
    lines = [
        f"# {args.experiment.title} at {args.resolution}x{args.resolution}",
        "",
        f"{len(args.seeds)} seed(s) ({', '.join(map(str, args.seeds))}) per setting; {args.steps} optimizer "
        f"steps of batch {preset.batch_size} each (`tiny` UNet, {dict(preset.unet_overrides)}; Adam {preset.lr:g}, "
        f"warm-up {preset.warmup_steps}, clip {preset.grad_clip:g}, EMA {preset.ema_decay:g}, {preset.lr_schedule} "
        f"learning rate, network output `{preset.model_output}`); {args.train_images} training images. Each run "
        f"sampled from its EMA weights, {args.n} images per sampler, the same noise for every setting of a seed; "
        f"scored with `blurdiff.quality.evaluate` against {2 * args.n} of {args.heldout_images} held-out {held_out}"
        f"the first {args.n} as reference, the next {args.n} as the noise floor). Mean ± std over seeds "
        f"(sample std); verdicts per seed. SWD ×1e3 (averaged over the Laplacian levels); spectrum "
        f"error: mean |log10| power ratio over all frequencies but DC; std: of the raw samples, "
        f"channels pooled. N = {N}.",
        "",
        fid.note + ".",
        "",
        "| setting | process | sampler | SWD avg | spectrum error | spectrum error, upper half | std | verdicts "
        "| FID |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    floor = None
    for setting in args.settings:
        setting_runs = [r for r in runs if r.setting == setting]
        f_text = process_text(setting_runs[0].process())
        trained = [r.trained() or {} for r in setting_runs]
        failed = sum(bool(t.get("failed")) for t in trained)
        unhealthy = sum(t.get("healthy") is False and not t.get("failed") for t in trained)
        for sampler in SAMPLERS:
            done = [results[k] for r in setting_runs if (k := (setting, r.seed, sampler)) in results]
            if not done:
                label = "training diverged" if failed else "not done yet"
                lines.append(_row(setting, f_text, _SAMPLER_LABEL[sampler], label, "", "", "", "", ""))
                continue
            floor = done[0]["report"]["metrics"]
            note = f" ({failed} diverged in training)" if failed else ""
            if unhealthy:
                note += f" ({unhealthy} flagged unhealthy in training: see runs/*/metrics.jsonl)"
            meta = done[0]["meta"]
            sampler_text = f"{_SAMPLER_LABEL[sampler]} ({meta['sampler']}, {meta['steps']} steps)"
            lines.append(_row(setting, f_text, sampler_text, *_score_cells(done, note)))
    if floor is None and reference is not None:
        floor = reference["report"]["metrics"]
    if floor is not None:
        cells = (f"{floor[k]['floor']:.3g}" for k in _METRICS)
        lines.append(_row("held-out data (noise floor)", "", "", *cells, f"{data_std:.3g}", "", ""))
    if reference is not None:
        lines.append(_row("training crops (a perfect model of the training split)", "", "", *_score_cells([reference])))
    lines.append("")
    if gains:
        per_setting = {s: [gains[(s, seed)] for seed in args.seeds if (s, seed) in gains] for s in args.settings}
        text = "; ".join(f"{s} {_stats(g)}" for s, g in per_setting.items() if g)
        lines += [
            "The networks' gain on the mean frequency at t = N (about 1 is right; below 1/2 Eq. 12 blows the "
            f"images' brightness up; `dc_gain` in scripts/table1.py): {text}.",
            "",
        ]
    train_seconds = [(r.trained() or {}).get("seconds") for r in runs]
    span = wall_clock(out)
    lines.append(
        (f"Time: {hms(span)} wall clock from the plan to the last sample; " if span is not None else "Time: ")
        + f"{hms(clock.elapsed)} in this call; training runs took "
        + (", ".join(f"{r.name} {hms(s)}" for r, s in zip(runs, train_seconds) if s is not None) or "—")
        + ". Figure: figure.png; every number: results.json."
    )
    path = out / "table.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def process_text(process: ProcessConfig) -> str:
    """The process of a row in a few words: f(N) and the blur schedule for the paper's process (and the
    paper's f(N) where it differs), the family's own fields for the others."""
    if process.family != "lee":
        own = ("blur_sigma_min", "blur_sigma_max", "d_min", "noise_sigma")
        fields = {k: v for k, v in process.to_dict().items() if k in own}
        return f"{process.family}: " + ", ".join(f"{k} {v:g}" for k, v in fields.items())
    f_max = float(process.f_max)
    if f_max == 0:
        return "0 (no blur)"
    paper = PAPER_F_MAX[process.blur_schedule]
    return f"{f_max:.4g} {process.blur_schedule}" + ("" if math.isclose(f_max, paper) else f" (paper: {paper:.4g})")


def wall_clock(out: Path) -> float | None:
    """Seconds from the plan to the newest sample image: the whole experiment over all its calls,
    pauses between them included (both files are written once: a call that only scores adds nothing)."""
    images = list((out / "results").glob("*/*/[0-9]*.png"))
    if not images or not (out / PLAN).is_file():
        return None
    return max(p.stat().st_mtime for p in images) - (out / PLAN).stat().st_mtime


def _label(img, text: str, width: int):
    canvas = Image.new("RGB", (max(width, img.width), img.height + 20), "white")
    ImageDraw.Draw(canvas).text((4, 3), text, fill="black", font=font(12))
    canvas.paste(img, (0, 20))
    return canvas


def write_figure(out: Path, args, samples: dict, heldout: torch.Tensor, train_images: torch.Tensor) -> Path | None:
    """Sample grids (rows: samplers; columns: data, then each setting; the first seed's samples) and
    the radial power spectra of every setting and sampler (all seeds pooled) against the held-out data's."""
    cells, s = min(args.n, 36), upscale_factor(args.resolution)

    def panel(images: torch.Tensor, text: str):
        x = images[:cells].float().clamp(-1, 1).repeat_interleave(s, -2).repeat_interleave(s, -1)
        img = Image.fromarray(grid(x, int(math.ceil(math.sqrt(cells)))))
        return _label(img, text, img.width)

    columns = [[panel(heldout, "held-out data"), panel(train_images, "training crops")]]
    curves = {"held-out data": radial_power_spectrum(heldout)}
    for setting in args.settings:
        columns.append([])
        for sampler in SAMPLERS:
            pooled = [samples[k] for seed in args.seeds if (k := (setting, seed, sampler)) in samples]
            name = f"{setting}, {_SAMPLER_LABEL[sampler]}"
            columns[-1].append(panel(pooled[0], name) if pooled else None)
            if pooled:
                curves[name] = radial_power_spectrum(torch.cat(pooled).clamp(-1, 1))
    if len(curves) == 1:
        return None
    panels = [p for col in columns for p in col if p is not None]
    cell_w, cell_h, gap = max(p.width for p in panels), max(p.height for p in panels), 10
    grid_w = len(columns) * (cell_w + gap) + gap
    tmp = out / ".spectra.tmp.png"
    title = "radial power spectrum: samples (seeds pooled, clamped) against held-out data"
    plot_spectra(curves, tmp, size=(max(grid_w, 720), 420), title=title)
    plot = Image.open(tmp)
    plot.load()
    tmp.unlink()
    canvas = Image.new("RGB", (max(grid_w, plot.width), 2 * (cell_h + gap) + gap + plot.height), "white")
    for c, col in enumerate(columns):
        for r, p in enumerate(col):
            if p is not None:
                canvas.paste(p, (gap + c * (cell_w + gap), gap + r * (cell_h + gap)))
    canvas.paste(plot, (0, 2 * (cell_h + gap) + gap))
    path = out / "figure.png"
    with atomic_path(path) as tmp_path:
        canvas.save(tmp_path, format="PNG")
    return path


def main(argv=None, experiment: Experiment = TABLE1) -> int:
    args = parse_args(argv, experiment)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    N = num_timesteps(args)
    runs = [Run(out, setting, seed, args) for setting in args.settings for seed in args.seeds]
    clock = Clock()

    if args.estimate_only:
        benchmark(args, clock)
        print_estimate(clock, args, runs, N, full_work(args, runs, N))
        return 0

    check_plan(out, args)
    data = {"train": args.train_images, "heldout": args.heldout_images}
    left = work_left(runs, args, N, sum(n for d, n in data.items() if not (out / "data" / d / "data.mdb").is_file()))
    if any(v for k, v in left.items() if k != "score"):
        benchmark(args, clock)
        print_estimate(clock, args, runs, N, left)
    else:
        print("table1: every training and sample is done; scoring what is missing and writing the table", flush=True)

    tasks_total = len(runs) * (1 + len(SAMPLERS))
    tasks_done = 0

    def progress(what: str) -> None:
        remaining = estimate(clock, work_left(runs, args, N, 0))
        eta = datetime.now() + timedelta(seconds=remaining)
        print(
            f"[{tasks_done}/{tasks_total}] {what}; elapsed {hms(clock.elapsed)}, left ≈ {hms(remaining)} "
            f"(ETA {eta:%H:%M})",
            flush=True,
        )

    train_dir, heldout_dir = ensure_data(out, args, clock)
    heldout = load_data_images(heldout_dir, args.resolution, 2 * args.n, seed=args.eval_seed)
    data_std = float(heldout[: args.n].std())  # the reference set's, channels pooled (as the samples' std)
    fid = Fid(out, heldout_dir, args)
    print(fid.note, flush=True)
    reference = reference_score(out, train_dir, heldout, args, fid)

    results: dict[tuple[str, int, str], dict[str, Any]] = {}
    gains: dict[tuple[str, int], float] = {}
    samples: dict[tuple[str, int, str], torch.Tensor] = {}
    for run in runs:
        info = run.trained()
        tasks_done += 1
        if info is None:
            before = run.steps_done()
            try:
                info = train_run(run, train_dir, args)
            except RunInUseError as e:  # another call trains it now: go on with the rest, it will be scored later
                tasks_done += len(SAMPLERS)
                progress(f"skipped {run.name}: {e}")
                continue
            clock.record("train_step", info["seconds"], max(info["step"] - before, 1))
            state = "FAILED: " + info["failed"] if info.get("failed") else info["verdict"]
            progress(f"trained {run.name} to step {info['step']} in {hms(info['seconds'])} ({state})")
        if info.get("failed"):
            tasks_done += len(SAMPLERS)
            continue
        loaded = load_run(run)
        gains[(run.setting, run.seed)] = dc_gain(run, loaded, heldout, args)
        for sampler in SAMPLERS:
            fresh = len(run.images_done(sampler)) < args.n or _read_json(run.results / sampler / "score.json") is None
            key = (run.setting, run.seed, sampler)
            samples[key], raw, meta = sample_run(run, sampler, loaded, args, clock, progress)
            results[key] = score(run, sampler, samples[key], raw, heldout, meta, args, clock, fid)
            tasks_done += 1
            if fresh:
                r = results[key]["report"]
                progress(
                    f"{run.name} {sampler}: SWD {r['metrics']['swd_avg']['samples']:.3g} (floor "
                    f"{r['metrics']['swd_avg']['floor']:.3g}), spectrum error "
                    f"{r['metrics']['spectrum_error']['samples']:.3g}, std {r['raw']['overall_std']:.3g}, "
                    f"{r['verdict']}"
                )
        write_table(out, args, runs, results, reference, fid, N, clock, data_std, gains)  # after every run

    train_images = load_data_images(train_dir, args.resolution, min(args.n, 36), seed=args.eval_seed + 1)
    table = write_table(out, args, runs, results, reference, fid, N, clock, data_std, gains)
    figure = write_figure(out, args, samples, heldout, train_images)
    runs_json = {r.name: {"train": r.trained(), "dc_gain": gains.get((r.setting, r.seed))} for r in runs}
    for r in runs:  # then each sampler's score
        runs_json[r.name].update({s: results.get((r.setting, r.seed, s)) for s in SAMPLERS})
    summary = {"plan": plan_of(args), "seeds": args.seeds, "settings": args.settings, "fid_note": fid.note}
    _write_json(out / "results.json", {**summary, "runs": runs_json, "train_reference": reference})
    print(table.read_text())
    print(f"table: {table}\nfigure: {figure}\nresults: {out / 'results.json'}", flush=True)
    print(f"total time of this call: {hms(clock.elapsed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sample a trained run into a folder of PNGs: ``blurdiff sample --run RUN --n N --out DIR``.

Images are ``DIR/000000.png``, ``000001.png``, … (index order), each written atomically (a
temporary file renamed into place), in the process's resolution. EMA weights by default.

Reproducible and resumable. Images are made in batches of ``--batch-size`` (always full
batches: the unused tail of the last one is dropped); batch ``b`` draws all its randomness from
a generator seeded by ``(seed, b's first index, batch size)``, so image ``i`` depends only on
the checkpoint, the seed, the batch size, the sampler and the backend/device, never on ``--n``
or on what ran before. A run that was interrupted continues where it stopped: batches whose
images all exist are skipped, existing files are never rewritten, and running again with a
larger ``--n`` adds images. ``DIR/sample.json`` records the settings (written with the first
batch: a run that made no image binds nothing); resuming with other settings (another checkpoint,
seed, batch size, sampler, steps, …) is refused. The device and the batch size are checked before
the folder is touched.

``--export DIR`` samples an export (README "Exported weights": its source checkpoint's images, bit for
bit); ``sample.json`` records that checkpoint, so a folder begun from it continues from its export and back.

``--npz`` (``DIR/samples_NxHxWx3.npz``: the N PNGs as one uint8 ``[N, H, W, 3]`` array, key ``arr_0``,
once the folder holds all N), ``--trajectory`` and ``--grid`` (``DIR/figures/``), the samplers and the
divergence guard (``raw_stats.jsonl``, ``stats.json``): README "Two commands", "Samples you can
trust" and "Sampling with fewer steps".
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import blurdiff_ops
from blurdiff.atomic import file_sha256, remove_stale, write_text_atomic
from blurdiff.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
from blurdiff.devices import amp_dtype, check_batch_fits, resolve_device, sampling_network
from blurdiff.export import export_info, load_export
from blurdiff.images import load_images, save_grid, save_npz, save_png, save_strips, upscale_factor
from blurdiff.presets import get_preset
from blurdiff.progress import Progress
from blurdiff.safe_json import loads as json_loads
from blurdiff.sample_guard import FIGURES, RAW_STATS_FILE, SETTINGS_FILE, STATS_FILE, SampleStats, divergence_reasons
from blurdiff.samplers import make_sampler
from blurdiff.settings import Settings, check_against_run

_FORMAT = 2  # 2: the integrators of docs/sampling.md §4-§6 (ancestral and ddim changed), spacing
_PNG = re.compile(r"^\d{6,}\.png$")


# ------------------------------------------------------------------------------------- helpers
def image_name(index: int) -> str:
    return f"{index:06d}.png"


def batch_seed(seed: int, first: int, batch_size: int) -> int:
    """The seed of the batch that starts at image ``first`` (63 bits of a SHA-256)."""
    digest = hashlib.sha256(f"blurdiff-sample:{int(seed)}:{int(first)}:{int(batch_size)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class SampleSource:
    """The weights being sampled and what ``DIR/sample.json`` records of them."""

    path: Path  # the checkpoint file, or the export folder
    step: int  # the checkpoint's (an export's source checkpoint's)
    sha256: str  # of the checkpoint file (an export's source): with ``ema``, names the weights
    preset: str | None
    ema: bool
    export: bool
    process: object
    model: torch.nn.Module


def _check_preset(path, trained: str | None, preset: str | None) -> None:
    if preset is not None:
        get_preset(preset)  # an unknown name is its own error
        if trained != preset:
            raise ValueError(f"{path} was trained with preset {trained!r}, not --preset {preset!r}")


def _load(run, ckpt, preset: str | None, ema: bool | None, backend: str, device: torch.device) -> SampleSource:
    """The checkpoint's weights and process, with clear errors for every wrong input."""
    ema = True if ema is None else ema
    path = resolve_checkpoint(run, ckpt)
    state = load_checkpoint(path)
    config = state.get("config")
    if not isinstance(config, dict) or not all(k in config for k in ("process", "unet")):
        raise ValueError(f"{path}: the checkpoint's config lacks the process/unet description")
    _check_preset(path, config.get("preset"), preset)
    which = "ema" if ema else "model"
    if not isinstance(state.get(which), dict) or not state[which]:
        raise ValueError(f"{path} holds no {which} weights" + (" (try --no-ema)" if ema else ""))
    try:  # NaN or inf weights: a ValueError naming the file
        process, model = build_from_checkpoint(state, use_ema=ema, device=device, backend=backend, source=path)
    except (RuntimeError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: cannot build the model it describes: {e}") from e
    return SampleSource(path, int(state["step"]), file_sha256(path), config.get("preset"), ema, False, process, model)


def _load_export(folder, preset: str | None, ema: bool | None, backend: str, device: torch.device) -> SampleSource:
    """An export's weights and process (blurdiff.export), recorded in ``sample.json`` as its
    source checkpoint's: the same weights, the same images."""
    info = export_info(folder)
    path = Path(folder)
    _check_preset(path, info["preset"], preset)
    if ema is not None and ema != info["ema"]:
        held, asked = ("EMA", "raw") if info["ema"] else ("raw", "EMA")
        raise ValueError(
            f"{path} holds the {held} weights only, not the {asked} ones; "
            + ("drop --no-ema" if info["ema"] else "pass --no-ema")
            + " or export the other weights"
        )
    process, model = load_export(path, device=device, backend=backend)
    return SampleSource(
        path, info["checkpoint_step"], info["checkpoint_sha256"], info["preset"], info["ema"], True, process, model
    )


def load_source(run, ckpt, export, preset: str | None, ema: bool | None, backend: str, device) -> SampleSource:
    """Where the network comes from: the export ``export``, else the checkpoint ``run``/``ckpt`` name."""
    if export is not None:
        source = _load_export(export, preset, ema, backend, device)
    else:
        source = _load(run, ckpt, preset, ema, backend, device)
    try:
        source.process.ops(device)  # backend='fused' without kernels fails here, not mid-run
    except RuntimeError as e:
        raise ValueError(f"{source.path}: cannot build the model it describes: {e}") from e
    return source


def _from_settings(section: dict, name: str, given):
    """A sampler setting given both as an option and in ``--set``/``--config``: they must agree."""
    if name not in section:
        return given
    if given is not None and given != section[name]:
        option = {"name": "--sampler", "steps": "--steps", "spacing": "--spacing"}[name]
        raise ValueError(f"{option} {given} and sampler.{name}={section[name]} disagree; give one of them")
    return section[name]


class OtherSettingsError(ValueError):
    """The folder holds samples made with other settings (its ``sample.json`` says which)."""


def _check_settings(out: Path, settings: dict) -> bool:
    """Check that ``DIR/sample.json`` agrees with ``settings``; True when the folder has no binding
    ledger yet, and the caller writes one once its first batch is made.

    A ledger binds only while the folder holds an image: one left by a run that made none (it failed
    on its first batch, or was killed before) records nothing and is replaced, with the statistics
    files beside it."""
    path = out / SETTINGS_FILE
    has_images = any(_PNG.match(p.name) for p in out.iterdir())
    if path.is_file() and has_images:
        try:
            old = json_loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is unreadable ({e}); remove it or pick another --out") from e
        keys = [k for k in {**old, **settings} if old.get(k) != settings.get(k)]
        diff = [f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in keys]
        if diff:
            raise OtherSettingsError(
                f"{out} already holds samples made with other settings ({'; '.join(diff)}). Repeat "
                f"those settings to continue, or pick another --out"
            )
        return False
    if has_images:
        raise ValueError(
            f"{out} already holds numbered PNGs but no {SETTINGS_FILE}: not a folder this "
            f"command made; pick another --out"
        )
    if path.is_file():  # a ledger of no images: its statistics describe no image either
        for name in (RAW_STATS_FILE, STATS_FILE):
            (out / name).unlink(missing_ok=True)
    return True


class _Trajectory:
    """Records x_s and x̂_0 for the first rows at evenly spaced kept steps."""

    def __init__(self, sampler, rows: int, frames: int):
        self.sampler, self.rows = sampler, rows
        steps = sampler.timesteps
        n = max(1, min(frames - 1, len(steps)))
        picks = sorted({round(k * (len(steps) - 1) / max(n - 1, 1)) for k in range(n)})
        self.at = {steps[k] for k in picks}
        self.x, self.x0 = [], []  # x_s and x̂_0 of the rows at each step in ``at``

    def __call__(self, step: int, x: torch.Tensor, eps: torch.Tensor) -> None:
        if step in self.at:
            x, eps = x[: self.rows], eps[: self.rows]
            self.x.append(x.detach().float().cpu())
            t = torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)
            self.x0.append(self.sampler.process.predict_x0(x, eps, t).float().cpu())

    def save(self, out: Path, final: torch.Tensor) -> tuple[Path, Path]:
        final = final[: self.rows].detach().float().cpu()
        out.mkdir(exist_ok=True)
        paths = out / "trajectory.png", out / "trajectory_x0.png"
        save_strips(_upscale(self.x + [final]), paths[0])
        save_strips(_upscale(self.x0 + [final]), paths[1])
        return paths


def _upscale(frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """Nearest-neighbour upscaling for figures (see :func:`blurdiff.images.upscale_factor`)."""
    s = upscale_factor(max(frames[0].shape[-2:]))
    return [f.repeat_interleave(s, -2).repeat_interleave(s, -1) for f in frames]


def complete_images(out: Path, n: int) -> set[int]:
    """The indices below ``n`` of the complete PNGs in ``out`` (:func:`image_name`'s names)."""
    found = set()
    for name in os.listdir(out) if out.is_dir() else []:
        stem, dot, ext = name.partition(".")
        if ext == "png" and stem.isdigit() and image_name(int(stem)) == name and int(stem) < n:
            if _is_complete_png(out / name):
                found.add(int(stem))
    return found


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
                    entry = json_loads(line)
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
        known = [self.batches[b] for b in batches if b in self.batches]
        return functools.reduce(SampleStats.merge, known, SampleStats()), len(batches) - len(known)


class SampleLedger:
    """The resumable ledger of the folder ``out`` of images ``0 … n-1`` (the module docstring):
    ``sample.json`` checked on opening, the complete images, each batch's seed and raw statistics."""

    def __init__(
        self,
        out,
        n: int,
        source: SampleSource,
        integrator,
        seed: int,
        batch_size: int,
        device,
        compiled: bool = False,
        amp: str = "none",
    ):
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.n, self.seed, self.batch_size, self.device = out, n, seed, batch_size, device
        self.settings = {
            "format": _FORMAT,
            # An export records its source checkpoint: its images are that checkpoint's, and a
            # folder begun from one is continued from the other.
            "checkpoint_sha256": source.sha256,
            "checkpoint_step": source.step,
            "preset": source.preset,
            "ema": source.ema,
            "sampler": integrator.name,
            "steps": integrator.K,
            "spacing": integrator.spacing,
            "seed": seed,
            "batch_size": batch_size,
            "backend": "reference" if source.process.ops(device) is blurdiff_ops.reference else "fused",
            "device": device.type,
            "resolution": list(source.process.resolution),
            # Keys only when set: older folders continue.
            **({"compiled": True} if compiled else {}),
            **({"amp": amp} if amp != "none" else {}),
        }
        # Written once the first batch is made, just before its images: a run that made none (a
        # device or a batch that fails) leaves no ledger to bind the folder.
        self.pending = _check_settings(out, self.settings)
        remove_stale(out, "*.png")  # leftovers of an interrupted write: never final names
        remove_stale(out, "*.npz")
        self.complete = complete_images(out, n)  # one listing of the folder, not n look-ups
        self.raw = _RawStats(out / RAW_STATS_FILE)
        self.num_batches = -(-n // batch_size)

    def todo(self) -> list[int]:
        """The batches that miss an image."""
        B = self.batch_size
        per_batch = collections.Counter(i // B for i in self.complete)
        full = {b for b, k in per_batch.items() if k == min(B, self.n - b * B)}
        return [b for b in range(self.num_batches) if b not in full]

    def save(self, b: int, x: torch.Tensor) -> int:
        """Record batch ``b`` (``x``: all ``batch_size`` images); returns how many PNGs it wrote."""
        if self.pending:
            write_text_atomic(self.out / SETTINGS_FILE, json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
            self.pending = False
        self.raw.record(b, SampleStats.of(x))  # before the PNGs: a batch with images has its statistics
        first = b * self.batch_size
        to_write = [i for i in range(first, min(first + self.batch_size, self.n)) if i not in self.complete]
        for i in to_write:
            save_png(x[i - first], self.out / image_name(i))
        self.complete.update(to_write)
        return len(to_write)

    def summarize(self, ckpt: Path, integrator, data_std: float | None):
        """The raw statistics of the folder's batches (None when none are recorded), how many batches
        have none, and why they look diverged; written to ``DIR/stats.json`` (read by ``blurdiff eval``)."""
        stats, unknown = self.raw.total(range(self.num_batches))
        if not stats.count:
            return None, unknown, []
        reasons = divergence_reasons(stats, data_std)
        summary = {
            "checkpoint": str(ckpt),
            "sampler": integrator.name,
            "steps": integrator.K,
            "batches_unknown": unknown,
            "raw": stats.to_dict(),
            "summary": stats.summary(),
            "data_std": data_std,
            "diverged": bool(reasons),
            "reasons": reasons,
        }
        write_text_atomic(self.out / STATS_FILE, json.dumps(summary, indent=2) + "\n")
        return stats, unknown, reasons


def sample_into(
    ledger: SampleLedger, integrator, model, *, trajectory=None, quiet=False, on_batch=None, cuda_graph=False
):
    """The loop: every batch of ``ledger`` that misses an image, sampled by ``integrator`` and saved,
    then ``on_batch(b, images written)``. ``trajectory`` (rows, frames): batch 0's figures too,
    sampling it again if complete (the same images). Returns the number of images written and the
    trajectory figures' paths (None without ``trajectory``). ``cuda_graph``: each batch's steps replayed
    as a CUDA graph (:meth:`blurdiff.samplers.Sampler.sample`: the same images)."""
    todo = ledger.todo()
    rows, frames = trajectory or (0, 0)
    if rows and 0 not in todo:  # batch 0 again (the same images), only for its trajectory
        todo.insert(0, 0)
    shape = (ledger.batch_size, model.config.in_channels, *integrator.process.resolution)
    written, trajectory_paths = 0, None
    with Progress(ledger.n - len(ledger.complete), "sampling", unit="img", enabled=not quiet) as bar:
        for n_batch, b in enumerate(todo):
            record = _Trajectory(integrator, min(rows, ledger.batch_size), frames) if rows and b == 0 else None

            def callback(step, x, eps, record=record, n_batch=n_batch):
                if record is not None:
                    record(step, x, eps)
                bar.update(
                    0,
                    batch=f"{n_batch + 1}/{len(todo)}",
                    step=f"{integrator.K - integrator.position(step) + 1}/{integrator.K}",
                )

            gen = torch.Generator(device=ledger.device)
            gen.manual_seed(batch_seed(ledger.seed, b * ledger.batch_size, ledger.batch_size))
            x = integrator.sample(
                model, shape, generator=gen, device=ledger.device, callback=callback, guard=False, cuda_graph=cuda_graph
            )
            k = ledger.save(b, x)
            if record is not None:
                trajectory_paths = record.save(ledger.out / FIGURES, x)
            written += k
            bar.update(k)
            if on_batch is not None:
                on_batch(b, k)
    return written, trajectory_paths


# ------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class SamplingPlan:
    """What :func:`sample_to_folder` is about to do: known once the checkpoint is loaded and the
    folder checked, before the first image is drawn."""

    checkpoint: Path  # the checkpoint file, or the export folder (``export``)
    checkpoint_step: int  # an export's: its source checkpoint's
    ema: bool
    sampler: str  # one of blurdiff.samplers.SAMPLERS
    steps: int  # the K steps kept ...
    num_timesteps: int  # ... of the process's N
    spacing: str
    batch_size: int
    device: torch.device
    n: int
    present: int  # images already complete in the folder
    to_make: int
    advice: tuple[str, ...]  # the sampler's warnings about these settings (e.g. no data statistics)
    export: bool = False  # ``checkpoint`` is an export folder (blurdiff export)


@dataclass(frozen=True)
class SamplingReport:
    """What :func:`sample_to_folder` did."""

    plan: SamplingPlan
    out: Path
    written: int  # images made by this call
    seconds: float
    raw: SampleStats | None  # the values before the clamp of every batch of the folder (None: none recorded)
    raw_unknown_batches: int  # batches made by a version that recorded none
    data_std: float | None  # the training data's (from the checkpoint), the yardstick of ``raw``'s std
    diverged: tuple[str, ...]  # why the raw values look diverged; empty: they do not
    trajectory: tuple[Path, Path] | None  # DIR/figures/trajectory.png and trajectory_x0.png
    grid: Path | None  # DIR/figures/grid.png
    npz: Path | None = None  # DIR/samples_NxHxWx3.npz (``npz=True``)


def sample_to_folder(
    *,
    run: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
    export: str | os.PathLike | None = None,
    n: int,
    out: str | os.PathLike,
    steps: int | None = None,
    sampler: str | None = None,
    spacing: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    ema: bool | None = None,
    device: str | torch.device | None = None,
    backend: str = "auto",
    preset: str | None = None,
    trajectory: bool = False,
    grid: bool = False,
    trajectory_samples: int = 4,
    trajectory_frames: int = 10,
    quiet: bool = False,
    npz: bool = False,
    settings: Settings | None = None,
    on_plan: Callable[[SamplingPlan], None] | None = None,
    compile: bool = False,
    amp: str = "none",
    cuda_graph: bool = False,
) -> SamplingReport:
    """Sample the newest checkpoint of the run folder ``run`` (or the checkpoint ``ckpt``: a path,
    or a file name inside ``run``; or the export folder ``export`` of ``blurdiff export``) into the
    folder ``out``, as the module docstring describes: ``blurdiff sample``, whose options these
    keywords are (``ema=False`` is ``--no-ema``; ``None``: a checkpoint's EMA weights, the weights
    an export holds; ``npz=True`` is ``--npz``; ``compile=True`` is ``--compile`` and ``amp`` is
    ``--amp``: the network under ``torch.compile`` and in a mixed precision
    (:func:`blurdiff.devices.sampling_network`), whose samples equal the float32 eager ones within
    rounding, so the folder records them and is continued only with them); ``cuda_graph=True`` is
    ``--cuda-graph``: each batch's steps captured once as a CUDA graph and replayed, the same images.

    ``settings`` (``--set``/``--config``, :func:`blurdiff.settings.parse_settings`): its ``sampler``
    section gives ``steps``/``sampler``/``spacing`` where those are None (another value is an
    error); its ``process`` and ``unet`` fields must be the run's.

    ``on_plan`` is called with the :class:`SamplingPlan` before the first image is drawn (the
    command line prints it); ``quiet`` hides the progress bar. Bad input (a missing run, a
    checkpoint of another preset, a folder of other settings ...) raises ValueError or an OSError.
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if trajectory and (trajectory_samples < 1 or trajectory_frames < 2):
        raise ValueError("--trajectory-samples must be >= 1 and --trajectory-frames >= 2")
    if export is not None and (run is not None or ckpt is not None):
        raise ValueError("give --export DIR or --run RUN/--ckpt FILE, not both")
    amp_dtype(amp)  # a wrong name fails before anything is loaded or written
    device = resolve_device(device)
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, got --device {device}")
    settings = settings or {}
    steps, sampler, spacing = (
        _from_settings(settings.get("sampler", {}), name, given)
        for name, given in (("steps", steps), ("name", sampler), ("spacing", spacing))
    )
    source = load_source(run, ckpt, export, preset, ema, backend, device)
    path, process, model = source.path, source.process, source.model
    check_against_run(
        settings, {"process": process.config.to_dict(), "unet": dataclasses.asdict(model.config)}, str(path)
    )
    with warnings.catch_warnings(record=True) as caught:  # advice for the caller, not a Python warning
        warnings.simplefilter("always")
        integrator = make_sampler(process, steps, sampler, spacing)

    # At least the batch's images and the network's first feature maps are held at once: a batch
    # size that cannot fit is refused before the folder is touched.
    H, W = process.resolution
    check_batch_fits(device, batch_size, (model.config.in_channels + model.config.model_channels) * H * W)

    ledger = SampleLedger(out, n, source, integrator, seed, batch_size, device, compiled=compile, amp=amp)
    out = ledger.out
    plan = SamplingPlan(
        checkpoint=path,
        checkpoint_step=source.step,
        ema=source.ema,
        sampler=integrator.name,
        steps=integrator.K,
        num_timesteps=process.num_timesteps,
        spacing=integrator.spacing,
        batch_size=batch_size,
        device=device,
        n=n,
        present=len(ledger.complete),
        to_make=n - len(ledger.complete),
        advice=tuple(str(w.message) for w in caught),
        export=source.export,
    )
    if on_plan is not None:
        on_plan(plan)

    t0 = time.perf_counter()
    rows_frames = (trajectory_samples, trajectory_frames) if trajectory else None
    network = sampling_network(model, amp, compile)
    written, trajectory_paths = sample_into(
        ledger, integrator, network, trajectory=rows_frames, quiet=quiet, cuda_graph=cuda_graph
    )
    seconds = time.perf_counter() - t0
    data_std = process.data_stats.std if process.data_stats is not None else None
    stats, unknown, reasons = ledger.summarize(path, integrator, data_std)
    grid_path = None
    if grid:
        (out / FIGURES).mkdir(exist_ok=True)
        images = load_images([out / image_name(i) for i in range(min(n, 64))], out).float()
        grid_path = out / FIGURES / "grid.png"
        save_grid(_upscale([images])[0], grid_path)
    npz_path = None
    if npz:
        incomplete = [i for i in range(n) if not _is_complete_png(out / image_name(i))]
        if incomplete:  # cannot happen after the loop above, unless someone deletes files meanwhile
            raise FileNotFoundError(f"{out / image_name(incomplete[0])} is missing: no npz of an incomplete folder")
        npz_path = save_npz([out / image_name(i) for i in range(n)], out)
    return SamplingReport(
        plan=plan,
        out=out,
        written=written,
        seconds=seconds,
        raw=stats,
        raw_unknown_batches=unknown,
        data_std=data_std,
        diverged=tuple(reasons),
        trajectory=trajectory_paths,
        grid=grid_path,
        npz=npz_path,
    )

"""Train a blur-diffusion model: ``blurdiff train --data PATH --preset NAME --out RUN --max-steps N``.

One process per GPU (``torchrun --nproc-per-node G -m blurdiff train ...`` for several; then
``--batch-size`` is per process), or one process on the CPU. The run folder holds::

    RUN/config.json              the run's configuration (also inside every checkpoint)
    RUN/checkpoints/ckpt-XXXXXXXX.pt   model, EMA, optimizer, step, RNG states, data position
    RUN/metrics.jsonl            one JSON line per --log-every steps (step, loss, lr, grad norm, images/s)
    RUN/samples/step-XXXXXXXX.png      a grid of EMA samples every --sample-every steps

Every random draw of a step (t, noise, dropout, flips) comes from state saved in the checkpoint,
so on the CPU a run resumed with --resume ends bitwise where an uninterrupted run would.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from blurdiff.atomic import remove_stale, write_text_atomic
from blurdiff.checkpoint import (
    check_run_folder,
    check_writable,
    checkpoint_dir,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_newest_readable,
    networks_of,
    prune_checkpoints,
    save_checkpoint,
)
from blurdiff.data import infinite_loader, open_dataset
from blurdiff.devices import resolve_device
from blurdiff.diffusion import BACKENDS, BlurDiffusion, ReferenceResidual
from blurdiff.health import HealthEvent, TrainingHealth
from blurdiff.images import save_grid
from blurdiff.presets import get_preset
from blurdiff.progress import Progress
from blurdiff.quality import SampleStats, divergence_reasons
from blurdiff.statistics import DEFAULT_IMAGES, DataStatistics, estimate_data_statistics
from blurdiff.unet import build_unet

log = logging.getLogger("blurdiff.train")

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["TrainOptions", "Trainer", "NonFiniteLossError", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) of a step is NaN or infinite; nothing was updated or saved."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        super().__init__(
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step} "
            f"(loss={loss}, grad norm={grad_norm}); stopped before the optimizer step, no "
            f"checkpoint of this state was written"
        )


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------

# Options that shape the training trajectory: left unset (None), they come from the checkpoint
# when resuming, else from the preset (or the default here), so that `--resume` alone continues
# a run exactly as it was started.
_FROM_PRESET = object()
_TRAJECTORY_DEFAULTS: dict[str, Any] = dict(
    batch_size=_FROM_PRESET,
    lr=_FROM_PRESET,
    ema_decay=_FROM_PRESET,
    warmup_steps=_FROM_PRESET,
    grad_clip=_FROM_PRESET,
    amp="none",
    seed=0,
    resolution=None,
    process_overrides={},
    unet_overrides={},
)


@dataclass
class TrainOptions:
    """What ``blurdiff train`` takes; the Python API takes the same (and the two override dicts).

    ``batch_size`` is per process. ``process_overrides``/``unet_overrides`` change
    ``BlurDiffusion``/``UNetConfig`` fields of the preset (e.g. ``{"steps": 50}``) for experiments
    and tests; ``resolution`` sets both the process resolution and the UNet's ``image_size``.
    """

    data: str
    preset: str
    out: str
    max_steps: int
    resume: bool = False
    batch_size: int | None = None
    lr: float | None = None
    ema_decay: float | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    amp: str | None = None
    seed: int | None = None
    resolution: int | None = None
    process_overrides: dict[str, Any] | None = None
    unet_overrides: dict[str, Any] | None = None
    ckpt_every: int = 5000
    keep: int = 3
    sample_every: int = 10000
    sample_n: int = 16
    log_every: int = 100
    health_window: int = 100
    final_check: bool = True
    num_workers: int | None = None
    device: str | None = None
    backend: str = "auto"
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        """The options of a parsed ``blurdiff train`` command line (see :mod:`blurdiff.cli.train`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def resolved(self, saved: dict[str, Any] | None = None) -> TrainOptions:
        """A copy with every unset trajectory option filled: from ``saved`` (a checkpoint's
        ``config["train"]``) when given, else from the preset or the defaults."""
        preset = get_preset(self.preset)
        out = dataclasses.replace(self)
        for name, default in _TRAJECTORY_DEFAULTS.items():
            if getattr(out, name) is not None:
                continue
            if saved is not None and saved.get(name) is not None:
                value = saved[name]
            elif default is _FROM_PRESET:
                value = getattr(preset, name)
            else:
                value = default
            setattr(out, name, copy.deepcopy(value))
        return out

    def check(self) -> None:
        """Clear errors for values that make no sense (after :meth:`resolved`)."""
        if self.max_steps < 0:
            raise ValueError(f"--max-steps must be >= 0, got {self.max_steps}")
        for name in ("batch_size", "sample_n", "log_every", "health_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {self.ema_decay}")
        if not self.grad_clip >= 0:
            raise ValueError(f"--grad-clip must be >= 0 (0: off), got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0 (0: off), got {self.warmup_steps}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"--amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {BACKENDS}, got {self.backend!r}")


def _config_diff(saved, wanted) -> str | None:
    """None when two plain-data configs agree (blind to tuple-vs-list), else what differs."""

    def plain(x):
        return json.loads(json.dumps(x, default=str))

    saved, wanted = plain(saved), plain(wanted)
    if saved == wanted:
        return None
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        return ", ".join(f"{k}: run {saved.get(k)!r}, now {wanted.get(k)!r}" for k in keys)
    return f"run {saved!r}, now {wanted!r}"


# ------------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    initialized_here: bool = False


def setup_distributed(device: str | None) -> DistInfo:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; start the process group when there are several
    processes (nccl on CUDA, gloo on the CPU). A single process needs none of it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    initialized_here = False
    if not dist.is_initialized():
        on_cuda = (device is None or device.startswith("cuda")) and torch.cuda.is_available()
        if on_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if on_cuda else "gloo")
        initialized_here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), initialized_here)


def _device_for_rank(requested: str | None, rank: int, world_size: int) -> torch.device:
    """The device of process ``rank``: ``requested`` (default: CUDA when available); a CUDA device
    without an index is one GPU per process, torchrun's LOCAL_RANK when set, else the rank, modulo
    the visible GPUs (1 where each process sees only its own), or the current GPU for one process."""
    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        if world_size > 1:
            index = int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1)
        else:
            index = torch.cuda.current_device()
        device = torch.device("cuda", index)
    return device


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


class Trainer:
    """Owns the model, its EMA, the optimizer, the process, the data position, checkpoints and logs.

    >>> trainer = Trainer(TrainOptions(data="data/toy", preset="toy", out="runs/toy", max_steps=1000))
    >>> trainer.run_loop()

    ``rank``/``world_size`` describe a started process group (see :func:`train`); the model is
    wrapped in ``DistributedDataParallel`` when ``world_size > 1``. Construction checks the data,
    the run folder (a run with checkpoints is refused unless ``resume``; a resumed run must have
    the same preset, process and network) and loads the newest checkpoint when resuming.
    """

    def __init__(self, options: TrainOptions, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.run_dir = Path(options.out)
        self.device = torch.device(device) if device is not None else _device_for_rank(options.device, rank, world_size)

        get_preset(options.preset)  # unknown preset: a clear error before anything else
        state = self._checkpoint_to_resume(options)
        self.options = opts = options.resolved(state["config"]["train"] if state else None)
        opts.check()
        if opts.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("--amp fp16 needs CUDA (it trains with a GradScaler); on the CPU use --amp bf16 or none")
        self.preset = preset = get_preset(opts.preset)
        self.batch_size = opts.batch_size  # per process
        self.global_batch = opts.batch_size * world_size

        # The process and the network the preset describes, with the run's overrides.
        process_kwargs = dict(preset.process, **opts.process_overrides)
        unet_overrides = dict(preset.unet_overrides, **opts.unet_overrides)
        if opts.resolution is not None:
            process_kwargs["resolution"] = opts.resolution
            unet_overrides["image_size"] = opts.resolution
        self.process = BlurDiffusion(**process_kwargs, backend=opts.backend)
        self.process.ops(self.device)  # backend="fused" without kernels: fail now, not at step 1

        # Data first: a missing or empty data set should fail before a big model is built.
        dataset = open_dataset(opts.data, self.process.resolution, hflip=preset.hflip)
        self.num_images = len(dataset)
        # What the samplers take as their Gaussian reference, and the guard as the data's scale:
        # measured once, then carried by every checkpoint.
        saved_stats = DataStatistics.from_state(state.get("data_stats"), self.process.resolution) if state else None
        self.process.data_stats = saved_stats or _measure_data_statistics(self.process, dataset)

        torch.manual_seed(opts.seed)  # the initial weights: the same on every rank
        self.model = build_unet(preset.unet, **unet_overrides).to(self.device)
        self.config = {
            "preset": preset.name,
            "process": self.process.config,
            "unet": dataclasses.asdict(self.model.config),
            "model_output": preset.model_output,
            "train": dataclasses.asdict(opts),
        }
        if state is not None:
            self._check_same_run(state["config"])
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # The ε-predictor of the EMA weights, for samples (the EMA network itself is what is saved).
        self.ema_eps = ReferenceResidual(self.ema, self.process) if preset.model_output == "eps_residual" else self.ema
        self._ema_params, self._model_params = list(self.ema.parameters()), list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opts.lr)
        self.scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" else None
        self.amp_dtype = AMP_DTYPES[opts.amp]

        # Randomness. `generator` draws t and the noise of the *global* batch (the same stream on
        # every rank; each rank keeps its slice), so a run on G processes draws what one process
        # with G times the batch would. The global torch RNG (dropout) is per rank.
        self.generator = torch.Generator(self.device).manual_seed(opts.seed)
        torch.manual_seed(opts.seed + 1 + rank)
        self.step = 0
        start_batch = 0
        health = (state.get("health") or {}) if state is not None else {}
        self.health = TrainingHealth.from_state(health.get("monitor"), window=opts.health_window)
        self.last_good: str | None = health.get("last_good")  # newest checkpoint saved while healthy
        self.verdict: tuple[bool, str] | None = None  # set by health_report()
        if state is not None:
            start_batch = self._load_state(state)
        self._last_saved = self.step if state is not None else None

        self.ddp_model = self.model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

        num_workers = opts.num_workers if opts.num_workers is not None else (4 if self.device.type == "cuda" else 0)
        self.loader = infinite_loader(
            dataset,
            self.batch_size,
            seed=opts.seed,
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
            start_batch=start_batch,
            pin_memory=self.device.type == "cuda",
        )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    # ------------------------------------------------------------------ run folder and resuming
    def _checkpoint_to_resume(self, opts: TrainOptions) -> dict[str, Any] | None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"--out {self.run_dir} exists and is not a folder")
        check_run_folder(self.run_dir)  # someone else's config.json and metrics.jsonl are not ours to replace
        if self.is_main:  # the one rank that writes: a folder it cannot write fails now, not at the first save
            check_writable(self.run_dir)
        newest = latest_checkpoint(self.run_dir)
        if newest is None:
            if opts.resume:
                log.info("--resume: no checkpoint in %s yet, starting a new run", self.run_dir)
            return None
        if not opts.resume:
            raise ValueError(
                f"the run folder {self.run_dir} already has checkpoints (newest: {newest.name}); "
                f"pass --resume to continue that run, or choose another --out"
            )
        if self.world_size == 1:
            path, state = self._newest_readable()
        else:
            # One choice for every rank: rank 0 picks (setting aside what does not load) and the
            # others load the file it names. Its error reaches them too, so that none waits forever.
            choice = [None]
            if self.is_main:
                try:
                    path, state = self._newest_readable()
                    choice = [str(path)]
                except (ValueError, OSError) as e:
                    choice = [e]
            dist.broadcast_object_list(choice, src=0)
            if isinstance(choice[0], Exception):
                raise choice[0]
            if not self.is_main:
                path = Path(choice[0])
                state = load_checkpoint(path)
        log.info("resuming from %s", path)
        return state

    def _newest_readable(self) -> tuple[Path, dict[str, Any]]:
        def fits_the_run(path: Path, state: dict[str, Any]) -> None:
            # What _load_state will load, tried first on networks without memory, so that a
            # checkpoint that does not fit is set aside like an unreadable one and an older one
            # is tried. The optimizer is the trainer's (see __init__).
            model = networks_of(state, path)["model"]
            try:
                torch.optim.Adam(model.parameters()).load_state_dict(state["optimizer"])
            except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
                raise ValueError(f"{path}: the optimizer state does not fit the network: {e}") from e
            if not isinstance(state["config"].get("train"), dict):
                raise ValueError(f"{path}: the checkpoint's config lacks the run's training options")

        found = load_newest_readable(self.run_dir, validate=fits_the_run)
        if found is None:
            raise ValueError(f"--resume: the checkpoints in {checkpoint_dir(self.run_dir)} vanished while resuming")
        return found

    def _check_same_run(self, saved: dict[str, Any]) -> None:
        for key in ("preset", "process", "unet", "model_output"):
            diff = _config_diff(saved.get(key, "eps" if key == "model_output" else None), self.config[key])
            if diff:
                raise ValueError(
                    f"--resume: the run in {self.run_dir} was trained with a different {key} than "
                    f"this command asks for ({diff}); use the run's own settings, or another --out"
                )
        saved_train = saved["train"]
        for key in ("batch_size", "seed"):
            if saved_train.get(key) != self.config["train"][key]:
                warnings.warn(
                    f"--resume with {key} {self.config['train'][key]} (the run used {saved_train.get(key)}): "
                    f"training goes on, but not with the batches the run would have seen",
                    stacklevel=2,
                )

    def _load_state(self, state: dict[str, Any]) -> int:
        """Model, EMA, optimizer, scaler, step and RNG states from ``state``; returns ``start_batch``."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # --lr given on resume wins over the saved one
            group["lr"] = self.options.lr
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

        rng, data = state.get("rng") or {}, state.get("data") or {}
        same_layout = rng.get("device_type") == self.device.type and len(rng.get("ranks", [])) == self.world_size
        if same_layout:
            self.generator.set_state(rng["train_generator"])
            mine = rng["ranks"][self.rank]
            torch.set_rng_state(mine["torch"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            warnings.warn(
                "--resume on another device type or number of processes: the random streams "
                "are re-seeded from (seed, step), so the run is not bitwise the uninterrupted one",
                stacklevel=2,
            )
            self.generator.manual_seed(self.options.seed + 1_000_003 * self.step)
            torch.manual_seed(self.options.seed + 1 + self.rank + 1_000_003 * self.step)
        if data.get("num_images", self.num_images) != self.num_images:
            if self.is_main:
                warnings.warn(
                    f"--resume on a data set of {self.num_images} images (the run was trained on "
                    f"{data['num_images']}): the data stream is re-cut, so the batches from here "
                    "on are not the ones the run would have seen",
                    stacklevel=2,
                )
            return self.step
        if data.get("world_size", 1) != self.world_size or data.get("batch_size") != self.batch_size:
            return self.step  # a re-cut data stream: at least do not restart at its beginning
        return int(data.get("start_batch", self.step))

    def _prepare_run_folder(self) -> None:
        """config.json, and metrics.jsonl cut back to the step the run (re)starts from."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(checkpoint_dir(self.run_dir), "ckpt-*.pt")  # a save killed mid-write
        write_text_atomic(self.run_dir / "config.json", json.dumps(self.config, indent=2, default=str) + "\n")
        _truncate_metrics(self.metrics_path, self.step)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _eps_model(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.ddp_model(x_t, t)
        if self.preset.model_output == "eps_residual":
            out = self.process.reference_eps(x_t, t) + out.float()
        return out

    def _draw_t_noise(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t and ε of this rank's samples, cut from draws for the whole global batch.

        Rank ``r`` holds samples ``r, r + G, r + 2G, ...`` of the global batch (the loader's
        sharding), so it keeps ``[r::G]`` of the global draws.
        """
        G = self.world_size
        t = torch.randint(1, self.process.steps + 1, (x0.shape[0] * G,), generator=self.generator, device=self.device)
        noise = torch.randn(
            (x0.shape[0] * G, *x0.shape[1:]), generator=self.generator, device=self.device, dtype=x0.dtype
        )
        if G > 1:
            t, noise = t[self.rank :: G].contiguous(), noise[self.rank :: G].contiguous()
        return t, noise

    def _next_batch(self) -> torch.Tensor:
        # Starting the DataLoader draws a seed from the global RNG; keep that out of the
        # training's random stream (it would shift dropout after a resume).
        with torch.random.fork_rng(devices=[]):
            batch = next(self.loader)
        return batch.to(self.device, non_blocking=True)

    def _mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)  # gloo has no AVG
            value /= self.world_size
        return value

    def run_step(self, x0: torch.Tensor) -> tuple[float, float]:
        """One optimizer step on the batch ``x0``; returns (loss averaged over ranks, grad norm).

        Raises :class:`NonFiniteLossError` before touching the weights if either is NaN/inf
        (with fp16, inf gradients are the GradScaler's business, not an error).
        """
        self.optimizer.zero_grad(set_to_none=True)
        t, noise = self._draw_t_noise(x0)
        loss = self.process.training_loss(self._eps_model, x0, t=t, noise=noise)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        loss_value, norm_value = torch.stack(
            [self._mean_over_ranks(loss.detach()).float(), grad_norm.float()]
        ).tolist()  # one sync per step
        if not math.isfinite(loss_value) or (self.scaler is None and not math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self.step + 1, loss_value, norm_value)
        if self.options.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.options.grad_clip, grad_norm)
        for group in self.optimizer.param_groups:  # a function of the step: resumes exactly
            group["lr"] = self.learning_rate(self.step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._update_ema()
        return loss_value, norm_value

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step + 1``: linear warm-up, then constant."""
        warmup = self.options.warmup_steps
        return self.options.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def ema_decay(self, step: int) -> float:
        """The EMA decay of update ``step + 1``: ``min(decay, (1 + step) / (10 + step))``, so that the
        average forgets the random initial weights within the first steps instead of carrying a
        fraction ``decay^steps`` of them (8 % after 2500 steps at 0.999)."""
        return min(self.options.ema_decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema <- decay * ema + (1 - decay) * model, as guided-diffusion's update_ema (one foreach op).
        torch._foreach_lerp_(self._ema_params, self._model_params, 1.0 - self.ema_decay(self.step))

    def run_loop(self) -> int:
        """Train until ``max_steps``; returns the final step. Rank 0 writes checkpoints, logs, samples."""
        opts = self.options
        if self.is_main:
            self._prepare_run_folder()
            log.info(
                "training %s on %d images: %s steps, batch %d (%d per process x %d), lr %g, ema %g, device %s",
                opts.preset,
                self.num_images,
                opts.max_steps,
                self.global_batch,
                self.batch_size,
                self.world_size,
                opts.lr,
                opts.ema_decay,
                self.device,
            )
        if self.step >= opts.max_steps:
            log.info("the run is already at step %d >= --max-steps %d: nothing to do", self.step, opts.max_steps)
            return self.step
        window = _Window()
        with Progress(
            opts.max_steps, "training", unit="step", initial=self.step, enabled=opts.progress and self.is_main
        ) as bar:
            while self.step < opts.max_steps:
                loss, grad_norm = self.run_step(self._next_batch())
                self.step += 1
                window.add(loss, grad_norm)
                event = self.health.update(self.step, loss, grad_norm)
                if event is not None:
                    self._report_health_event(event)
                bar.update(1, loss=window.mean_loss, **{"img/s": bar.rate * self.global_batch})
                if self.step % opts.log_every == 0 or self.step == opts.max_steps:
                    self._log_metrics(window)
                    window = _Window()
                if opts.ckpt_every and self.step % opts.ckpt_every == 0:
                    self.save()
                if opts.sample_every and self.step % opts.sample_every == 0:
                    self.sample_grid()
        if self._last_saved != self.step:
            self.save()
        return self.step

    # ------------------------------------------------------------------ health
    def _report_health_event(self, event: HealthEvent) -> None:
        if not self.is_main:
            return
        if event.kind == "spike":
            kept = (
                f"; {self.last_good} (the last checkpoint saved before it) is kept from pruning"
                if self.last_good
                else ""
            )
            log.warning(
                "%s%s. If it does not recover, lower --lr or raise --warmup-steps and start again from that checkpoint",
                event.message,
                kept,
            )
        else:
            log.info("recovered from the loss spike: %s", event.message)
        self._append_metrics(
            {
                "step": event.step,
                "event": event.kind,
                "message": event.message,
                "last_good_checkpoint": self.last_good,
                "time": time.time(),
            }
        )

    def final_sample_check(self, n: int | None = None, steps: int = 50) -> list[str]:
        """Sample ``n`` images (default ``sample_n``) from the EMA with the stable ancestral sampler
        at ``steps`` steps and return why they look diverged (empty: they do not)."""
        H, W = self.process.resolution
        shape = (n or self.options.sample_n, self.model.config.in_channels, H, W)
        generator = torch.Generator(self.device).manual_seed(self.options.seed)
        with torch.no_grad(), self._autocast():
            x = self.process.sample(
                self.ema_eps, shape, generator=generator, device=self.device, steps=steps, kind="ancestral", guard=False
            )
        return divergence_reasons(SampleStats.of(x.float()), self.process.data_stats.std)

    def health_report(self) -> tuple[bool, str]:
        """(healthy, one line): the loss history's verdict, and the final sample check's when enabled.
        Also kept as ``self.verdict`` and written to metrics.jsonl."""
        text = self.health.summary()
        healthy = self.health.healthy
        if self.options.final_check and self.is_main:
            reasons = self.final_sample_check()
            if reasons:
                healthy = False
                text += "; EMA samples (ancestral, 50 steps) look diverged: " + "; ".join(reasons)
            else:
                text += "; EMA samples (ancestral, 50 steps) in range"
        if not healthy and self.last_good:
            text += f"; last checkpoint saved while healthy: {checkpoint_dir(self.run_dir) / self.last_good}"
        if self.is_main:
            self._append_metrics(
                {"step": self.step, "event": "end", "healthy": healthy, "message": text, "time": time.time()}
            )
        self.verdict = (healthy, text)
        return self.verdict

    # ------------------------------------------------------------------ logs, samples, checkpoints
    def _log_metrics(self, window: _Window) -> None:
        if not self.is_main or window.steps == 0:
            return
        elapsed = time.perf_counter() - window.t0
        record = {
            "step": self.step,
            "loss": window.mean_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            # fp16: the GradScaler skips steps whose gradient overflowed (inf); JSON has no inf.
            "grad_norm": window.mean_grad_norm if math.isfinite(window.mean_grad_norm) else None,
            "images_per_s": window.steps * self.global_batch / elapsed if elapsed > 0 else None,
            "time": time.time(),
        }
        self._append_metrics(record)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def sample_grid(self) -> Path | None:
        """A grid of ``sample_n`` EMA samples (fixed seed: grids of different steps compare),
        drawn with ``BlurDiffusion.sample``, saved as ``RUN/samples/step-XXXXXXXX.png``."""
        if not self.is_main:
            return None
        H, W = self.process.resolution
        shape = (self.options.sample_n, self.model.config.in_channels, H, W)
        generator = torch.Generator(self.device).manual_seed(self.options.seed)

        def ema_eps(x, t):
            with self._autocast():
                return self.ema_eps(x, t)

        images = self.process.sample(ema_eps, shape, generator=generator, device=self.device)
        path = self.run_dir / "samples" / f"step-{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path)
        log.debug("wrote %s", path)
        return path

    def _rng_states(self) -> dict[str, Any]:
        mine = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        ranks = [mine]
        if self.world_size > 1:  # collective: every rank's dropout stream goes into rank 0's file
            ranks = [None] * self.world_size
            dist.all_gather_object(ranks, mine)
        return {"device_type": self.device.type, "train_generator": self.generator.get_state(), "ranks": ranks}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (see ``blurdiff.checkpoint``); a collective call under DDP."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.config,
            "rng": self._rng_states(),
            "data": {
                "start_batch": self.loader.next_batch,
                "batch_size": self.batch_size,
                "world_size": self.world_size,
                "seed": self.options.seed,
                "num_images": self.num_images,
            },
            "data_stats": self.process.data_stats.to_state(),
            "health": {"monitor": self.health.state_dict(), "last_good": self.last_good},
            "versions": {"torch": str(torch.__version__)},
        }

    def save(self) -> Path | None:
        """Write ``RUN/checkpoints/ckpt-{step}.pt`` atomically (rank 0) and keep the newest ``--keep``."""
        path = checkpoint_path(self.run_dir, self.step)
        if self.health.healthy:
            self.last_good = path.name
        state = self.state_dict()
        self._last_saved = self.step
        if not self.is_main:
            return None
        save_checkpoint(state, path)
        if self.options.keep:
            # The last checkpoint saved while healthy survives a spike however long it lasts.
            prune_checkpoints(self.run_dir, self.options.keep, protect={self.last_good})
        log.debug("saved %s", path)
        return path

    def close(self) -> None:
        self.loader.close()


class _Window:
    """Running sums of one logging window."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps = 0
        self.loss_sum = self.grad_norm_sum = 0.0

    def add(self, loss: float, grad_norm: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def mean_grad_norm(self) -> float:
        return self.grad_norm_sum / max(self.steps, 1)


def _measure_data_statistics(process: BlurDiffusion, dataset) -> DataStatistics:
    """The statistics of the first ``DEFAULT_IMAGES`` of a fixed permutation of ``dataset``, unflipped."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:DEFAULT_IMAGES].tolist()
    batches = (torch.stack([dataset[(i, False)] for i in order[k : k + 64]]) for k in range(0, len(order), 64))
    return estimate_data_statistics(process, batches)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``path`` up to ``step`` (a resumed run rewrites what came after);
    a torn last line (a crash mid-write) goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(kept))


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def train(options: TrainOptions) -> Trainer:
    """Run a whole training (under torchrun: one rank of it) and return the trainer.

    Reads RANK/WORLD_SIZE/LOCAL_RANK and starts the process group when ``WORLD_SIZE > 1``.
    """
    info = setup_distributed(options.device)
    try:
        trainer = Trainer(options, info.rank, info.world_size)
        try:
            trainer.run_loop()
            trainer.health_report()
        finally:
            trainer.close()
        return trainer
    finally:
        if info.initialized_here:
            dist.destroy_process_group()


if __name__ == "__main__":  # `torchrun --nproc-per-node G -m blurdiff.train ...`: the `blurdiff train` command
    from blurdiff.cli.train import main

    raise SystemExit(main())

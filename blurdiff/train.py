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

import contextlib
import copy
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

from blurdiff.atomic import remove_stale, write_text_atomic
from blurdiff.checkpoint import checkpoint_dir, checkpoint_path, prune_checkpoints, save_checkpoint
from blurdiff.data import infinite_loader, open_dataset
from blurdiff.devices import Autocast, CompiledNetwork, amp_dtype, check_batch_fits, resolve_device
from blurdiff.diffusion import BlurDiffusion, eps_model
from blurdiff.distributed import (
    data_parallel,
    device_for_rank,
    mean_over_ranks,
    setup_distributed,
    teardown_distributed,
)
from blurdiff.health import TrainingHealth
from blurdiff.images import save_grid
from blurdiff.presets import ExperimentPreset, get_preset
from blurdiff.progress import Progress
from blurdiff.resume import check_same_run, checkpoint_to_resume, restore_rng_states, resume_batch, rng_states
from blurdiff.run_folder import run_lock
from blurdiff.sample_guard import SampleStats, divergence_reasons
from blurdiff.statistics import DEFAULT_IMAGES, DataStatistics, estimate_data_statistics
from blurdiff.train_log import MetricsLog, Window
from blurdiff.train_options import TrainOptions
from blurdiff.unet import UNET_PRESETS, build_unet

log = logging.getLogger("blurdiff.train")

__all__ = [
    "RunPlan",
    "Trainer",
    "TrainingParts",
    "plan_run",
    "build_parts",
    "build_trainer",
    "NonFiniteLossError",
    "train",
]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) of a step is NaN or infinite; nothing was updated or saved."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        super().__init__(
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step} "
            f"(loss={loss}, grad norm={grad_norm}); stopped before the optimizer step, no "
            f"checkpoint of this state was written"
        )


# --------------------------------------------------------------------------- What a trainer trains


class RunPlan(NamedTuple):
    """What :func:`plan_run` settles about a run before anything is built."""

    options: TrainOptions  # resolved: every trajectory option set (from the run when resuming)
    preset: ExperimentPreset
    device: torch.device
    checkpoint: dict[str, Any] | None  # the one the run goes on from; None for a new run


class TrainingParts(NamedTuple):
    """What :func:`build_parts` builds for a :class:`Trainer` from a plan."""

    process: BlurDiffusion  # with its data statistics
    model: torch.nn.Module  # the preset's UNet with the run's overrides, on the device, at its initial weights
    dataset: torch.utils.data.Dataset


def plan_run(
    options: TrainOptions, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None
) -> RunPlan:
    """The run folder's checks, the checkpoint to resume (:func:`blurdiff.resume.checkpoint_to_resume`)
    and the options with every unset trajectory option filled (from that checkpoint, else the preset
    or the defaults), checked. A collective call when ``world_size > 1``."""
    preset = get_preset(options.preset)  # unknown preset: a clear error before anything else
    device = torch.device(device) if device is not None else device_for_rank(options.device, rank, world_size)
    checkpoint = checkpoint_to_resume(Path(options.out), options.resume, rank, world_size)
    resolved = options.resolved(checkpoint["config"]["train"] if checkpoint else None)
    resolved.check(device)
    return RunPlan(resolved, preset, device, checkpoint)


def build_parts(plan: RunPlan) -> TrainingParts:
    """The process, network and data set the plan's options describe (the preset with the run's
    overrides). The network's initial weights come from ``torch.manual_seed(seed)``: the same on
    every rank."""
    opts, preset, device = plan.options, plan.preset, plan.device
    process_overrides = dict(opts.process_overrides)
    if opts.resolution is not None:
        process_overrides["resolution"] = opts.resolution
    process = BlurDiffusion(dataclasses.replace(preset.process, **process_overrides), opts.backend)
    unet_overrides = dict(preset.unet_overrides, **opts.unet_overrides)
    if opts.resolution is not None:
        unet_overrides["image_size"] = opts.resolution
    elif "resolution" in opts.process_overrides and "image_size" not in unet_overrides:
        H, W = process.resolution
        if H == W:
            unet_overrides["image_size"] = H  # as --resolution does
    process.ops(device)  # backend="fused" without kernels: fail now, not at step 1

    # Data first: a missing or empty data set should fail before a big model is built.
    dataset = open_dataset(opts.data, process.resolution, hflip=preset.hflip, cache_bytes=int(opts.cache_mb * 2**20))
    process.data_stats = _data_statistics(process, dataset, plan.checkpoint)

    torch.manual_seed(opts.seed)  # the initial weights: the same on every rank
    model = build_unet(preset.unet, **unet_overrides).to(device)
    return TrainingParts(process, model, dataset)


def build_trainer(
    options: TrainOptions, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None
) -> Trainer:
    """A :class:`Trainer` of the parts :func:`build_parts` builds from the plan of ``options``."""
    plan = plan_run(options, rank, world_size, device)
    return Trainer(plan, *build_parts(plan), rank=rank, world_size=world_size)


def _data_statistics(process: BlurDiffusion, dataset, checkpoint: dict[str, Any] | None = None) -> DataStatistics:
    """What the samplers take as their Gaussian reference, and the guard as the data's scale: the
    checkpoint's, else measured on the first ``DEFAULT_IMAGES`` of a fixed permutation of ``dataset``,
    unflipped (then carried by every checkpoint)."""
    saved = DataStatistics.from_state(checkpoint.get("data_stats"), process.resolution) if checkpoint else None
    if saved:
        return saved

    def unflipped(i: int) -> torch.Tensor:  # blurdiff.data's data sets take (index, flip)
        return dataset[(i, False)] if hasattr(dataset, "hflip") else dataset[i]

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:DEFAULT_IMAGES].tolist()
    batches = (torch.stack([unflipped(i) for i in order[k : k + 64]]) for k in range(0, len(order), 64))
    return estimate_data_statistics(process, batches)


# --------------------------------------------------------------------------- The trainer


class Trainer:
    """Trains a process's ε-network on a data set: owns the model, its EMA, the optimizer, the data
    position, checkpoints and logs.

    >>> trainer = build_trainer(TrainOptions(data="data/toy", preset="toy", out="runs/toy", max_steps=1000))
    >>> trainer.run_loop()

    ``plan`` is the run's :func:`plan_run` (resolved options, preset, device, checkpoint to resume);
    the parts come from :func:`build_parts`, or are one's own: ``process`` (a :class:`BlurDiffusion`;
    without ``data_stats`` it gets the checkpoint's, or ones measured on ``dataset``), ``model`` (the
    ε-network ``model(x_t, t)`` with a ``config`` dataclass like ``UNetConfig``, which checkpoints
    record and samplers rebuild from) and ``dataset`` (map-style, ``[C, H, W]`` images in [-1, 1] at
    the process's resolution). A resumed run must have the same preset, process and network.
    ``rank``/``world_size`` describe a started process group (see :func:`train`).
    """

    def __init__(
        self,
        plan: RunPlan,
        process: BlurDiffusion,
        model: torch.nn.Module,
        dataset: torch.utils.data.Dataset,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.options, self.preset, self.device, state = plan
        opts, preset = self.options, self.preset
        self.run_dir = Path(opts.out)
        self.batch_size = opts.batch_size  # per process
        self.global_batch = opts.batch_size * world_size

        self.process = process
        self.num_images = len(dataset)
        if process.data_stats is None:
            process.data_stats = _data_statistics(process, dataset, state)
        self.model = model.to(self.device)
        self.config = {
            "preset": preset.name,
            "process": self.process.config.to_dict(),
            "unet": dataclasses.asdict(self.model.config),
            "model_output": preset.model_output,
            "train": dataclasses.asdict(opts),
        }
        if state is not None:
            check_same_run(state["config"], self.config, self.run_dir)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # The ε-predictor of the EMA weights, for samples (the EMA network itself is what is saved).
        self.ema_eps = eps_model(self.ema, self.process, preset.model_output)
        self._ema_params, self._model_params = list(self.ema.parameters()), list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opts.lr, fused=opts.fused_adam or None)
        self.scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" else None
        self.amp_dtype = amp_dtype(opts.amp)

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
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        if state is not None:
            start_batch = self._load_state(state)
        self._last_saved = self.step if state is not None else None

        self.ddp_model = data_parallel(self.model, self.device, world_size)
        # The ε-predictor trained: the network in the run's mixed precision, its output given its meaning.
        network = CompiledNetwork(self.ddp_model) if opts.compile else self.ddp_model
        self.train_eps = eps_model(Autocast(network, self.amp_dtype), self.process, preset.model_output)
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
    def _load_state(self, state: dict[str, Any]) -> int:
        """Model, EMA, optimizer, scaler, step and RNG states from ``state``; returns ``start_batch``."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # --lr and --fused-adam on resume win over the saved ones
            group.update(lr=self.options.lr, fused=self.options.fused_adam or None)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng = state.get("rng") or {}
        restore_rng_states(rng, self.generator, self.device, self.rank, self.world_size, self.options.seed, self.step)
        return resume_batch(
            state.get("data") or {}, self.step, self.num_images, self.batch_size, self.world_size, warn=self.is_main
        )

    def _prepare_run_folder(self) -> None:
        """config.json, and metrics.jsonl cut back to the step the run (re)starts from."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(checkpoint_dir(self.run_dir), "ckpt-*.pt")  # a save killed mid-write
        write_text_atomic(self.run_dir / "config.json", json.dumps(self.config, indent=2, default=str) + "\n")
        self.metrics.truncate(self.step)

    # ------------------------------------------------------------------ training
    def _draw_t_noise(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t and ε of this rank's samples, cut from draws for the whole global batch: rank ``r`` holds
        samples ``r, r + G, ...`` of it (the loader's sharding), so it keeps ``[r::G]`` of the draws."""
        G = self.world_size
        t = torch.randint(
            1, self.process.num_timesteps + 1, (x0.shape[0] * G,), generator=self.generator, device=self.device
        )
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

    def run_step(self, x0: torch.Tensor) -> tuple[float, float]:
        """One optimizer step on the batch ``x0``; returns (loss averaged over ranks, grad norm).
        :class:`NonFiniteLossError` before touching the weights if either is NaN/inf (with fp16, inf
        gradients are the GradScaler's business)."""
        self.optimizer.zero_grad(set_to_none=True)
        t, noise = self._draw_t_noise(x0)
        loss = self.process.training_loss(self.train_eps, x0, t=t, noise=noise)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        loss_value, norm_value = torch.stack(
            [mean_over_ranks(loss.detach(), self.world_size).float(), grad_norm.float()]
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
        """The learning rate of optimizer step ``step + 1``: linear warm-up, then constant, or (``cosine``)
        half a cosine from ``lr`` down to 0 at ``max_steps``. A function of the step and the options, so
        a resumed run continues exactly; resuming with a larger ``--max-steps`` stretches the cosine."""
        opts = self.options
        warmup = opts.warmup_steps
        if warmup and step + 1 < warmup:
            return opts.lr * (step + 1) / warmup
        if opts.lr_schedule == "cosine" and opts.max_steps > warmup:
            done = min(1.0, max(0.0, (step + 1 - warmup) / (opts.max_steps - warmup)))
            return opts.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        return opts.lr

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
        window = Window()
        with Progress(
            opts.max_steps, "training", unit="step", initial=self.step, enabled=opts.progress and self.is_main
        ) as bar:
            while self.step < opts.max_steps:
                loss, grad_norm = self.run_step(self._next_batch())
                self.step += 1
                window.add(loss, grad_norm)
                event = self.health.update(self.step, loss, grad_norm)
                if event is not None:
                    self.metrics.health_event(event, self.last_good)
                bar.update(1, loss=window.mean_loss, **{"img/s": bar.rate * self.global_batch})
                if self.step % opts.log_every == 0 or self.step == opts.max_steps:
                    self.metrics.window(self.step, window, self.optimizer.param_groups[0]["lr"], self.global_batch)
                    window = Window()
                if opts.ckpt_every and self.step % opts.ckpt_every == 0:
                    self.save()
                if opts.sample_every and self.step % opts.sample_every == 0:
                    self.sample_grid()
        if self._last_saved != self.step:
            self.save()
        return self.step

    def final_sample_check(self, n: int | None = None, steps: int = 50) -> list[str]:
        """Sample ``n`` images (default ``sample_n``) from the EMA with the stable ancestral sampler
        at ``steps`` steps (all N when the process has fewer) and return why they look diverged
        (empty: they do not)."""
        steps = min(steps, self.process.num_timesteps)
        H, W = self.process.resolution
        shape = (n or self.options.sample_n, self.model.config.in_channels, H, W)
        generator = torch.Generator(self.device).manual_seed(self.options.seed)
        x = self.process.sample(
            self.ema_eps,
            shape,
            generator=generator,
            device=self.device,
            steps=steps,
            sampler="ancestral",
            guard=False,
            amp=self.options.amp,
        )
        return divergence_reasons(SampleStats.of(x.float()), self.process.data_stats.std)

    def health_report(self) -> tuple[bool, str]:
        """(healthy, one line): the loss history's verdict, and the final sample check's when enabled.
        Also kept as ``self.verdict`` and written to metrics.jsonl."""
        text = self.health.summary()
        healthy = self.health.healthy
        if self.options.final_check and self.is_main:
            reasons = self.final_sample_check()
            what = f"EMA samples (ancestral, {min(50, self.process.num_timesteps)} steps)"
            if reasons:
                healthy = False
                text += f"; {what} look diverged: " + "; ".join(reasons)
            else:
                text += f"; {what} in range"
        if not healthy and self.last_good:
            text += f"; last checkpoint saved while healthy: {checkpoint_dir(self.run_dir) / self.last_good}"
        self.metrics.end(self.step, healthy, text)
        self.verdict = (healthy, text)
        return self.verdict

    # ------------------------------------------------------------------ samples, checkpoints
    def sample_grid(self) -> Path | None:
        """A grid of ``sample_n`` EMA samples (fixed seed: grids of different steps compare),
        drawn with ``BlurDiffusion.sample``, saved as ``RUN/samples/step-XXXXXXXX.png``."""
        if not self.is_main:
            return None
        H, W = self.process.resolution
        shape = (self.options.sample_n, self.model.config.in_channels, H, W)
        generator = torch.Generator(self.device).manual_seed(self.options.seed)
        images = self.process.sample(self.ema_eps, shape, generator=generator, device=self.device, amp=self.options.amp)
        path = self.run_dir / "samples" / f"step-{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path)
        log.debug("wrote %s", path)
        return path

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (see ``blurdiff.checkpoint``); a collective call under DDP."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.config,
            "rng": rng_states(self.generator, self.device, self.world_size),
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


# --------------------------------------------------------------------------- Entry points


def _check_batch_fits(options: TrainOptions, device: torch.device) -> None:
    """Refuse a new run's batch whose images and first feature maps alone exceed the device's memory
    (:func:`blurdiff.devices.check_batch_fits`); unknown names are left to the checks that follow."""
    preset = get_preset(options.preset)
    if preset.unet not in UNET_PRESETS:
        return
    r = options.resolution or options.process_overrides.get("resolution") or preset.process.resolution
    overrides = {**preset.unet_overrides, **options.unet_overrides}
    channels = overrides.get("model_channels", UNET_PRESETS[preset.unet].model_channels)
    inputs = overrides.get("in_channels", UNET_PRESETS[preset.unet].in_channels)
    try:
        H, W = (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))
        per_image = (int(inputs) + int(channels)) * H * W
    except (TypeError, ValueError, IndexError):
        return  # a malformed value: BlurDiffusion or UNetConfig says what is wrong with it
    if per_image > 0:
        check_batch_fits(device, options.batch_size, per_image)


def train(options: TrainOptions) -> Trainer:
    """Run a whole training (under torchrun: one rank of it, the process group started from
    RANK/WORLD_SIZE/LOCAL_RANK) and return the trainer."""
    # What can be checked without the run folder, before anything is written there (the lock
    # file, config.json): the device, and the options given (unset ones are the preset's here;
    # on --resume the run's are checked again once its checkpoint is read).
    device = resolve_device(options.device)
    early = options.resolved()
    early.check(device)
    if not options.resume:
        _check_batch_fits(early, device)
    info = setup_distributed(options.device)
    try:
        # Rank 0 writes the run folder, so it holds the folder's lock: a second training there is refused.
        with run_lock(options.out) if info.rank == 0 else contextlib.nullcontext():
            trainer = build_trainer(options, info.rank, info.world_size)
            try:
                trainer.run_loop()
                trainer.health_report()
            finally:
                trainer.close()
        return trainer
    finally:
        teardown_distributed(info)


if __name__ == "__main__":
    # The commands live in blurdiff.cli (importing it here would close an import cycle): say so
    # rather than exit 0 having trained nothing.
    print(
        "blurdiff.train is a module, not a command: use `python -m blurdiff train …` "
        "(or `torchrun … -m blurdiff.cli.train …`)",
        file=sys.stderr,
    )
    raise SystemExit(2)

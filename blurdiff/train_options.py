"""The options of a training run (``blurdiff train``'s, and the Python API's): :class:`TrainOptions`,
their defaults from a preset or a resumed run's checkpoint, and their checks."""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from blurdiff.devices import amp_dtype
from blurdiff.diffusion import BACKENDS
from blurdiff.presets import get_preset
from blurdiff.settings import parse_settings

LR_SCHEDULES = ("constant", "cosine")

__all__ = ["LR_SCHEDULES", "TrainOptions"]

# Options that shape the training trajectory: left unset (None), they come from the checkpoint
# when resuming, else from the preset (or the default here), so that `--resume` alone continues
# a run exactly as it was started.
_FROM_PRESET = object()
_TRAJECTORY_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(("batch_size", "lr", "ema_decay", "warmup_steps", "grad_clip", "lr_schedule"), _FROM_PRESET),
    **dict(
        amp="none", fused_adam=False, compile=False, seed=0, resolution=None, process_overrides={}, unet_overrides={}
    ),
}


@dataclass
class TrainOptions:
    """What ``blurdiff train`` takes; the Python API takes the same (and the two override dicts).

    ``batch_size`` is per process. ``process_overrides``/``unet_overrides`` change fields of the
    preset's process and UNet (e.g. ``{"num_timesteps": 50}``); ``resolution`` sets both the process
    resolution and the UNet's ``image_size``.
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
    lr_schedule: str | None = None
    amp: str | None = None
    fused_adam: bool | None = None
    compile: bool | None = None
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
    cache_mb: float = 1024.0
    device: str | None = None
    backend: str = "auto"
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        """The options of a parsed ``blurdiff train`` command line (see :mod:`blurdiff.cli.train`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        options = cls(**{k: v for k, v in vars(args).items() if k in names})
        settings = parse_settings(getattr(args, "set", None), getattr(args, "config", None))
        # A section left empty stays unset (None): on --resume it comes from the run.
        if settings["process"]:
            options.process_overrides = settings["process"]
        if settings["unet"]:
            options.unet_overrides = settings["unet"]
        return options

    def resolved(self, saved: dict[str, Any] | None = None) -> TrainOptions:
        """A copy with every unset trajectory option filled: from ``saved`` (a checkpoint's
        ``config["train"]``) when given, else from the preset or the defaults."""
        preset = get_preset(self.preset)
        out = dataclasses.replace(self)
        for name, default in _TRAJECTORY_DEFAULTS.items():
            given = getattr(out, name)
            if given is not None:
                if name in ("process_overrides", "unet_overrides") and saved and saved.get(name):
                    # Set on resume: on top of the run's own, so only what is given differs from the run.
                    setattr(out, name, {**saved[name], **given})
                continue
            if saved is not None and saved.get(name) is not None:
                value = saved[name]
            elif default is _FROM_PRESET:
                value = getattr(preset, name)
            else:
                value = default
            setattr(out, name, copy.deepcopy(value))
        return out

    def check(self, device: torch.device | None = None) -> None:
        """Clear errors for values that make no sense (after :meth:`resolved`), and for what the
        training ``device``, when given, cannot do."""
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        amp_dtype(self.amp)
        if not self.cache_mb >= 0:
            raise ValueError(f"--cache-mb must be >= 0 (0: off), got {self.cache_mb}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {BACKENDS}, got {self.backend!r}")
        if device is not None and self.amp == "fp16" and device.type != "cuda":
            raise ValueError("--amp fp16 needs CUDA (it trains with a GradScaler); on the CPU use --amp bf16 or none")

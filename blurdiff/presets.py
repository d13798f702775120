"""Experiment presets: the paper's three rows of Table 1, and a toy that trains on a laptop CPU.

A preset fixes the process (``BlurDiffusion`` arguments), the network (a ``build_unet`` preset
and overrides) and the optimisation defaults; command-line options override the latter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict

_LSUN64 = dict(resolution=64, basis="gaussian", sigma=0.4, noise_schedule="linear", steps=1000,
               direction="coarse_to_fine")


@dataclass(frozen=True)
class ExperimentPreset:
    name: str
    process: Dict[str, Any]
    unet: str
    unet_overrides: Dict[str, Any] = field(default_factory=dict)
    lr: float = 5e-5
    batch_size: int = 16
    ema_decay: float = 0.9999
    hflip: bool = True
    # Stability (not in the paper, which names none): a linear learning-rate warm-up and the
    # gradient clipped to this L2 norm. Measured on the toy preset (README, "Training that holds").
    warmup_steps: int = 1000
    grad_clip: float = 1.0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: Dict[str, ExperimentPreset] = {
    # Table 1: f(N) = 0.14 quartic (the paper's best), 0.6 log, and no blur (DDPM in the basis).
    "lsun64-quartic": ExperimentPreset(
        "lsun64-quartic", dict(_LSUN64, blur_schedule="quartic", f_max=(0.15 / 0.4) ** 2), "adm-lsun64"),
    "lsun64-log": ExperimentPreset("lsun64-log", dict(_LSUN64, blur_schedule="log", f_max=0.6), "adm-lsun64"),
    "lsun64-noblur": ExperimentPreset("lsun64-noblur", dict(_LSUN64, blur_schedule="none", f_max=0.0), "adm-lsun64"),
    # Two CPU cores, minutes: 16x16, a widened tiny UNet, a faster learning rate, a shorter EMA
    # (tried on the toy data: 32x32 or 32 channels still gave saturated colour fields after 25 min).
    # lr 1e-3 without warm-up or clipping diverged after 2300 steps on two machines (issue 10).
    "toy": ExperimentPreset(
        "toy", dict(_LSUN64, resolution=16, blur_schedule="quartic", f_max=(0.15 / 0.4) ** 2), "tiny",
        unet_overrides=dict(model_channels=64, channel_mult=(1, 1, 2)), lr=5e-4, batch_size=16, ema_decay=0.999,
        warmup_steps=200),
}


def get_preset(name: str) -> ExperimentPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]

"""Noise schedules ``β_i`` and blur schedules ``f(i)`` for ``i = 0 … N`` (DESIGN.md §1), float64."""

from __future__ import annotations

import math

import torch

NOISE_SCHEDULES = ("linear", "cosine")
BLUR_SCHEDULES = ("quartic", "log", "linear", "quadratic", "cubic", "none")

# The paper's presets (Table 1): quartic with f(N) = (0.15 / 0.4)², log with f(N) = 0.6.
PAPER_F_MAX = {"quartic": (0.15 / 0.4) ** 2, "log": 0.6, "none": 0.0}

_POWERS = {"linear": 1, "quadratic": 2, "cubic": 3, "quartic": 4}


def noise_betas(name: str, steps: int) -> torch.Tensor:
    """``β_0 = 0`` then ``β_1 … β_N``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    elif name == "cosine":
        # Nichol & Dhariwal (2021): ᾱ(t) ∝ cos²(((t/N + s) / (1 + s)) π/2), β capped at 0.999.
        s = 0.008
        i = torch.arange(steps + 1, dtype=torch.float64)
        alpha_bar = torch.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {name!r}")
    return torch.cat([torch.zeros(1, dtype=torch.float64), betas])


def blur_f(name: str, steps: int, f_max: float) -> torch.Tensor:
    """``f(i)`` for ``i = 0 … N`` with ``f(N) = f_max``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if f_max < 0:
        raise ValueError(f"f_max must be non-negative, got {f_max}")
    i = torch.arange(steps + 1, dtype=torch.float64)
    if name in _POWERS:
        return f_max * (i / steps) ** _POWERS[name]
    if name == "log":
        if steps < 2:
            raise ValueError("the log blur schedule needs steps >= 2 (it divides by ln N)")
        # f(0) is never used (and is negative here); kept as the formula gives it.
        return f_max * torch.log(i + 1e-6) / math.log(steps)
    if name == "none":
        return torch.zeros_like(i)
    raise ValueError(f"blur_schedule must be one of {BLUR_SCHEDULES}, got {name!r}")

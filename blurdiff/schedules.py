"""Noise schedules ``β_i`` and blur schedules ``f(i)`` for ``i = 0 … N`` (docs/design.md §1), float64."""

from __future__ import annotations

import math
import numbers
import operator
import os

import torch

NOISE_SCHEDULES = ("linear", "cosine")
BLUR_SCHEDULES = ("quartic", "log", "linear", "quadratic", "cubic", "none")

# The paper's presets (Table 1): quartic with f(N) = (0.15 / 0.4)², log with f(N) = 0.6.
PAPER_F_MAX = {"quartic": (0.15 / 0.4) ** 2, "log": 0.6, "none": 0.0}

_POWERS = {"linear": 1, "quadratic": 2, "cubic": 3, "quartic": 4}

#: The largest blur exponent f(N). The paper's is at most 0.6; at 1000 every frequency but the
#: mean is gone within the first steps of any schedule, and every sampler's tables were checked
#: finite up to it (16x16, 1000 steps, each basis and blur schedule); at 10⁵⁰ they are not.
F_MAX_LIMIT = 1000.0


def real_arg(name: str, value, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    """``value`` as a float; a ValueError naming ``name`` unless it is a finite real number in
    ``[low, high]`` (``(low, high]`` with ``low_open``); NaN, which range checks alone let through, too."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def int_arg(name: str, value, low: int) -> int:
    """``value`` as an int; a ValueError naming ``name`` unless it is an integer (not a bool, not a
    float, which ``int()`` would truncate) of at least ``low``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if n < low:
        raise ValueError(f"{name} must be at least {low}, got {n}")
    return n


def check_tables_fit(count: int, N: int, H: int, W: int) -> None:
    """Refuse, before anything is allocated, ``count`` float64 tables ``[N + 1, H, W]`` that do not fit
    in this machine's physical memory (a checkpoint can ask for any size); unchecked where it is unknown."""
    need = count * 8 * (N + 1) * H * W
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if need > memory:
        raise ValueError(
            f"a process of resolution {H}x{W} with {N} steps needs about {need / 2**30:.1f} GiB "
            f"for its per-frequency tables ({count} float64 arrays [{N + 1}, {H}, {W}]), more than "
            f"this machine's {memory / 2**30:.1f} GiB of memory; use a smaller resolution or fewer steps"
        )


def noise_betas(name: str, N: int) -> torch.Tensor:
    """``β_0 = 0`` then ``β_1 … β_N``."""
    N = int_arg("num_timesteps", N, 1)
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
    elif name == "cosine":
        # Nichol & Dhariwal (2021): ᾱ(t) ∝ cos²(((t/N + s) / (1 + s)) π/2), β capped at 0.999.
        s = 0.008
        i = torch.arange(N + 1, dtype=torch.float64)
        alpha_bar = torch.cos((i / N + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {name!r}")
    return torch.cat([torch.zeros(1, dtype=torch.float64), betas])


def blur_f(name: str, N: int, f_max: float) -> torch.Tensor:
    """``f(i)`` for ``i = 0 … N`` with ``f(N) = f_max``."""
    N = int_arg("num_timesteps", N, 1)
    f_max = real_arg("f_max", f_max, 0.0, F_MAX_LIMIT)
    i = torch.arange(N + 1, dtype=torch.float64)
    if name in _POWERS:
        return f_max * (i / N) ** _POWERS[name]
    if name == "log":
        if N < 2:
            raise ValueError("the log blur schedule needs num_timesteps >= 2 (it divides by ln N)")
        # f(0) is never used (and is negative here); kept as the formula gives it.
        return f_max * torch.log(i + 1e-6) / math.log(N)
    if name == "none":
        return torch.zeros_like(i)
    raise ValueError(f"blur_schedule must be one of {BLUR_SCHEDULES}, got {name!r}")

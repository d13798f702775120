"""The coarse-to-fine process families beside the paper's: their per-frequency tables, float64.

Every family is ``x̄_t = a_t ⊙ x̄_0 + s_t ⊙ ε̄`` per frequency, ``t = 0 … N``, ``a_0 = 1``, ``s_0 = 0``;
docs/design.md §1 ("Process families") gives the formulas and their papers. ``lee`` (the paper's) is
built by :class:`blurdiff.diffusion.BlurDiffusion` from its schedules; ``hoogeboom`` and ``rissanen``
run in the DCT basis. ``a`` is returned as its logarithm: rissanen's underflows float64
(``exp(-5685)`` at the finest frequency of a 32×32 image), its log does not.
"""

from __future__ import annotations

import math

import torch

from blurdiff.schedules import int_arg, real_arg

FAMILIES = ("lee", "hoogeboom", "rissanen")


def heat_frequencies(H: int, W: int) -> torch.Tensor:
    """``λ[i, j] = (π i/H)² + (π j/W)²``: the decay rate of DCT frequency ``(i, j)`` under the
    heat equation (``exp(-λ τ)`` after a time ``τ``, reflecting boundaries), float64 ``[H, W]``."""
    i = torch.arange(H, dtype=torch.float64)[:, None]
    j = torch.arange(W, dtype=torch.float64)[None, :]
    return (math.pi * i / H) ** 2 + (math.pi * j / W) ** 2


def check_family_args(family: str, blur_sigma_max, d_min, blur_sigma_min, noise_sigma) -> None:
    """One-line errors naming the field and its valid range; every family's fields are checked,
    used or not (like the basis's)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    real_arg("blur_sigma_max", blur_sigma_max, 0.0, low_open=True)
    real_arg("blur_sigma_min", blur_sigma_min, 0.0, low_open=True)
    real_arg("noise_sigma", noise_sigma, 0.0, low_open=True)
    if not 0.0 <= real_arg("d_min", d_min, -math.inf) < 1.0:
        raise ValueError(f"d_min must lie in [0, 1), got {d_min!r}")
    if family == "rissanen" and blur_sigma_min > blur_sigma_max:
        raise ValueError(
            f"blur_sigma_min must be at most blur_sigma_max ({blur_sigma_max!r}) for the rissanen family, "
            f"got {blur_sigma_min!r}"
        )


def hoogeboom_tables(H: int, W: int, N: int, blur_sigma_max: float, d_min: float):
    """``(log a, s)``, each ``[N+1, H, W]``, of Hoogeboom & Salimans' process (docs/design.md §1:
    ``a_t = α_t [(1 - d_min) exp(-λ τ_t) + d_min]``, ``s_t = σ_t``, cosine log-SNR); row 0 the data."""
    N = int_arg("num_timesteps", N, 1)
    t = torch.arange(N + 1, dtype=torch.float64) / N
    b = math.atan(math.exp(-5.0))
    c = math.atan(math.exp(5.0)) - b
    gamma = -2 * torch.log(torch.tan(c * t + b))
    log_alpha = -0.5 * torch.nn.functional.softplus(-gamma)  # ½ log sigmoid(γ)
    sigma = torch.sigmoid(-gamma).sqrt()
    tau = (blur_sigma_max * torch.sin(math.pi * t / 2) ** 2) ** 2 / 2
    d = (1 - d_min) * torch.exp(-heat_frequencies(H, W)[None] * tau[:, None, None]) + d_min
    log_a = log_alpha[:, None, None] + torch.log(d)
    s = sigma[:, None, None].expand(N + 1, H, W).clone()
    log_a[0], s[0] = 0.0, 0.0
    return log_a, s


def rissanen_tables(H: int, W: int, N: int, blur_sigma_min: float, blur_sigma_max: float, noise_sigma: float):
    """``(log a, s)``, each ``[N+1, H, W]``, of Rissanen et al.'s process (docs/design.md §1:
    ``a_k = exp(-λ σ_B,k²/2)``, log-spaced ``σ_B,k``, ``s_k = σ``); row 0 the data (no blur, no noise)."""
    N = int_arg("num_timesteps", N, 1)
    blur = torch.zeros(N + 1, dtype=torch.float64)
    blur[1:] = torch.exp(torch.linspace(math.log(blur_sigma_min), math.log(blur_sigma_max), N, dtype=torch.float64))
    log_a = -heat_frequencies(H, W)[None] * (blur**2 / 2)[:, None, None]
    s = torch.full((N + 1, H, W), float(noise_sigma), dtype=torch.float64)
    s[0] = 0.0
    return log_a, s

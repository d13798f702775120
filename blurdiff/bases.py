"""Separable orthogonal bases ``U = U_h ⊗ U_w`` and their per-frequency eigenvalues ``D``.

docs/design.md §1: ``to_spectral(x) = U_h^T x U_w``. Frequencies are ordered from the largest
eigenvalue (the coarsest, index ``(0, 0)``) to the smallest. Everything here is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from blurdiff.families import heat_frequencies
from blurdiff.schedules import int_arg, real_arg

BASES = ("gaussian", "dct", "identity")
#: The blur's σ in pixels. Below the range the kernel is a delta in float64 (exp(-1/(2·10⁻¹²)) = 0:
#: no blur), above it a flat average over any image that fits in memory: values outside give the
#: bounds' bases, and at the extremes σ² overflows or underflows.
SIGMA_RANGE = (1e-6, 1e6)


@dataclass(frozen=True)
class SeparableBasis:
    """``U_h`` ``[H, H]``, ``U_w`` ``[W, W]`` (orthogonal) and ``D`` ``[H, W]``, all float64."""

    name: str
    U_h: torch.Tensor
    U_w: torch.Tensor
    D: torch.Tensor


def gaussian_kernel_1d(n: int, sigma: float) -> torch.Tensor:
    """``g(k) ∝ exp(-k²/(2σ²))`` for ``k = -(n-1) … n-1``, normalised to sum 1."""
    real_arg("sigma", sigma, *SIGMA_RANGE)
    k = torch.arange(-(n - 1), n, dtype=torch.float64)
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def toeplitz_blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """``T[i, j] = g(j - i)``: the 1-D Gaussian blur with zero padding, symmetric."""
    g = gaussian_kernel_1d(n, sigma)
    idx = torch.arange(n)
    return g[(idx[None, :] - idx[:, None]) + (n - 1)]


def _fix_signs(V: torch.Tensor) -> torch.Tensor:
    # Eigenvectors are defined up to sign; make each column's largest entry positive so the
    # basis is the same on every machine (U diag(d) U^T does not care, saved spectra do).
    pivot = V.abs().argmax(dim=0)
    signs = torch.sign(V[pivot, torch.arange(V.shape[1])])
    signs[signs == 0] = 1
    return V * signs


def gaussian_eigenbasis_1d(n: int, sigma: float, eig_floor: float):
    """Eigenvectors (columns, by descending eigenvalue) and floored eigenvalues of the blur."""
    lam, V = torch.linalg.eigh(toeplitz_blur_matrix(n, sigma))
    order = torch.argsort(lam, descending=True)
    return _fix_signs(V[:, order]), lam[order].clamp_min(eig_floor)


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II ``C[k, m] = s_k cos(π (m + ½) k / n)``; rows are frequencies."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    m = torch.arange(n, dtype=torch.float64)[None, :]
    C = torch.cos(math.pi * (m + 0.5) * k / n) * math.sqrt(2.0 / n)
    C[0] /= math.sqrt(2.0)
    return C


def check_resolution(resolution) -> None:
    """``resolution`` must be an int, or a pair ``(H, W)`` of ints, each at least 1."""
    if isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        sides = resolution
    elif isinstance(resolution, int) and not isinstance(resolution, bool):
        sides = (resolution,)
    else:
        raise ValueError(f"resolution must be an int or a pair (H, W) of ints, got {resolution!r}")
    for side in sides:
        int_arg("resolution", side, 1)


def check_basis_args(sigma: float, eig_floor: float) -> None:
    """``sigma`` in :data:`SIGMA_RANGE` and ``eig_floor`` in (0, 1], finite: the floor keeps
    ``log D`` finite and ``D <= 1`` (no frequency is amplified). Checked for every basis, used or not."""
    real_arg("sigma", sigma, *SIGMA_RANGE)
    real_arg("eig_floor", eig_floor, 0.0, 1.0, low_open=True)


def make_basis(name: str, H: int, W: int, sigma: float = 0.4, eig_floor: float = 0.03) -> SeparableBasis:
    """The basis ``name`` ("gaussian", "dct" or "identity") for ``H × W`` images."""
    check_resolution((H, W))
    check_basis_args(sigma, eig_floor)
    if name == "gaussian":
        U_h, lam_h = gaussian_eigenbasis_1d(H, sigma, eig_floor)
        U_w, lam_w = gaussian_eigenbasis_1d(W, sigma, eig_floor)
        # Each frequency (a, b) gets its own eigenvalue pair: D is an outer product, laid out
        # exactly like to_spectral's output.
        D = (lam_h[:, None] * lam_w[None, :]).clamp_max(1.0)
    elif name == "dct":
        # to_spectral(x) = C_h x C_w^T, so U = C^T.
        U_h, U_w = dct_matrix(H).T.contiguous(), dct_matrix(W).T.contiguous()
        D = torch.exp(-(sigma**2) / 2 * heat_frequencies(H, W)).clamp(min=eig_floor, max=1.0)
    elif name == "identity":
        U_h = torch.eye(H, dtype=torch.float64)
        U_w = torch.eye(W, dtype=torch.float64)
        D = torch.ones(H, W, dtype=torch.float64)
    else:
        raise ValueError(f"basis must be one of {BASES}, got {name!r}")
    _check_well_conditioned(name, sigma, U_h, U_w, D)
    return SeparableBasis(name, U_h, U_w, D)


def _check_well_conditioned(name: str, sigma: float, U_h: torch.Tensor, U_w: torch.Tensor, D: torch.Tensor) -> None:
    """Every operator of the process is ``U diag(·) Uᵀ``: a ``U`` that is not finite and orthogonal,
    or a ``D`` outside (0, 1], would give wrong or NaN tables for any schedule."""
    for U in (U_h, U_w):
        eye = torch.eye(U.shape[0], dtype=U.dtype)
        if not torch.isfinite(U).all() or (U.T @ U - eye).abs().max() > 1e-8:
            raise ValueError(f"the {name} basis of sigma={sigma!r} at {U.shape[0]} pixels is not orthogonal")
    if not torch.isfinite(D).all() or (D <= 0).any() or (D > 1).any():
        raise ValueError(f"the {name} basis of sigma={sigma!r} has eigenvalues outside (0, 1]")

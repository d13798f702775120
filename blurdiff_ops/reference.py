"""The spectral ops in plain PyTorch: the oracle in tests and the baseline in benchmarks.

This is the plainest clear implementation of docs/design.md §2 (batched matmuls and broadcasting),
not a strawman: the compiled kernels must beat it honestly. Half-precision data is computed in
float32 (the tables are float32 then), like the kernels do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blurdiff_ops._checks import check_generator, check_lincomb, check_transform, table_dtype_for

__all__ = ["to_spectral", "from_spectral", "spectral_lincomb"]


def _to_spectral(x: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    return U_h.mT @ x @ U_w


def _from_spectral(x_bar: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    return U_h @ x_bar @ U_w.mT


def to_spectral(x: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    """``U_h^T · x · U_w`` over the last two dims; arguments as ``blurdiff_ops.to_spectral``'s."""
    check_transform("to_spectral", x, U_h, U_w)
    return _to_spectral(x.to(table_dtype_for(x.dtype)), U_h, U_w).to(x.dtype)


def from_spectral(x_bar: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    """``U_h · x̄ · U_w^T`` over the last two dims; arguments as ``blurdiff_ops.from_spectral``'s."""
    check_transform("from_spectral", x_bar, U_h, U_w)
    return _from_spectral(x_bar.to(table_dtype_for(x_bar.dtype)), U_h, U_w).to(x_bar.dtype)


def spectral_lincomb(
    inputs: Sequence[torch.Tensor],
    coefs: torch.Tensor,
    t: torch.Tensor,
    U_h: torch.Tensor,
    U_w: torch.Tensor,
    noise_coef: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``from_spectral(Σ_k coefs[k, t] ⊙ to_spectral(inputs[k]) + noise_coef[t] ⊙ z̄)``.

    ``z̄`` is ``to_spectral(noise)`` when ``noise`` is given, else standard normals drawn in the
    spectral domain from ``generator`` (the same law, since the basis is orthogonal). Arguments as
    ``blurdiff_ops.spectral_lincomb``'s.
    """
    check_lincomb(inputs, coefs, t, U_h, U_w, noise_coef, noise)
    check_generator(generator, inputs[0].device)
    return lincomb_unchecked(inputs, coefs, t, U_h, U_w, noise_coef, noise, generator)


def lincomb_unchecked(inputs, coefs, t, U_h, U_w, noise_coef=None, noise=None, generator=None):
    """The math of ``spectral_lincomb`` without the checks (which read ``t`` back): what the
    benchmarks hand to ``torch.compile``."""
    x0 = inputs[0]
    dtype = table_dtype_for(x0.dtype)
    # [K, B, 1, H, W]: one coefficient plane per input and sample, broadcast over channels.
    c = coefs[:, t].unsqueeze(2)
    acc = sum(c[k] * _to_spectral(x.to(dtype), U_h, U_w) for k, x in enumerate(inputs))
    if noise_coef is not None:
        if noise is not None:
            z_bar = _to_spectral(noise.to(dtype), U_h, U_w)
        else:
            z_bar = torch.randn(x0.shape, generator=generator, dtype=dtype, device=x0.device)
        acc = acc + noise_coef[t].unsqueeze(1) * z_bar
    return _from_spectral(acc, U_h, U_w).to(x0.dtype)

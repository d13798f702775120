"""For tests and benchmarks of the ops and of code built on them.

    with blurdiff_ops.testing.kernels_unavailable():
        y = blurdiff_ops.spectral_lincomb(...)   # the reference ops, with the fallback's warning

The ops then take the path a user without a compiled extension takes (``kernels_available`` is
False, ``unavailable_reason`` says ``reason``, and the once-per-reason fallback warning is
issued, unless ``warned``); everything is restored when the block ends.

    with blurdiff_ops.testing.dense_products():
        y = blurdiff_ops.spectral_lincomb(...)   # the kernels, with every basis multiplied densely

``basis_layout(U)`` says how the kernels multiply by ``U`` (docs/design.md §2): ``"even_odd"``
(half-size blocks), ``"dense"`` or ``"identity"`` (no product).

    with blurdiff_ops.testing.map_path("gemm"):
        y = blurdiff_ops.spectral_lincomb(...)   # CUDA: the GEMM path, whatever the cost model says

``map_path`` forces the CUDA backend's path (docs/design.md, "Which CUDA path"): ``"fused"`` (an
error where a plane's fused plan does not fit the device's shared memory), ``"gemm"`` or
``"auto"`` (the cost model's choice); the CPU backend has one path and ignores it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from blurdiff_ops import _loader

__all__ = ["kernels_unavailable", "dense_products", "basis_layout", "map_path"]


@contextlib.contextmanager
def kernels_unavailable(reason: str = "not built (simulated)", warned: bool = False) -> Iterator[None]:
    """Within the block the compiled kernels look absent for ``reason``; ``warned``: as if the
    fallback warning had been issued already."""
    saved = _loader._C, _loader._reason, _loader._warned
    _loader._C, _loader._reason, _loader._warned = None, reason, {reason} if warned else set()
    try:
        yield
    finally:
        _loader._C, _loader._reason, _loader._warned = saved


def _require_kernels(what: str) -> None:
    if _loader._C is None:
        raise RuntimeError(f"blurdiff_ops.testing.{what} needs the compiled kernels ({_loader._reason})")


@contextlib.contextmanager
def _switched(what: str, setter, value) -> Iterator[None]:
    """A kernel switch (``setter`` returns its previous value) set to ``value`` within the block."""
    _require_kernels(what)
    before = setter(value)
    try:
        yield
    finally:
        setter(before)


def dense_products() -> contextlib.AbstractContextManager[None]:
    """Within the block the kernels multiply by every basis densely, as for a ``U`` without the
    even/odd structure (for comparisons with the halved products)."""
    return _switched("dense_products", torch.ops.blurdiff_ops._set_even_odd, False)


def basis_layout(U: torch.Tensor) -> str:
    """How the kernels multiply by the basis side ``U`` ``[n, n]`` (float32 or float64)."""
    _require_kernels("basis_layout")
    ne = torch.ops.blurdiff_ops._basis_layout(U)
    return "identity" if ne < 0 else "dense" if ne == 0 else "even_odd"


def map_path(path: str) -> contextlib.AbstractContextManager[None]:
    """Within the block the CUDA kernels take ``path``: ``"fused"`` (one block per plane),
    ``"split"`` (the fused kernel over several blocks per plane), ``"gemm"`` or ``"auto"``."""
    return _switched("map_path", torch.ops.blurdiff_ops._set_map_path, path)

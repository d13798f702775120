"""Switches for tests and benchmarks of the ops and of code built on them (docs/design.md §2):
``with kernels_unavailable():`` takes the path of a user without the compiled extension;
``dense_products()`` and ``map_path(path)`` choose how the kernels compute; ``basis_layout(U)``
says how they multiply by a basis. Everything is restored when a block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from blurdiff_ops import _loader

__all__ = ["kernels_unavailable", "dense_products", "basis_layout", "map_path"]


@contextlib.contextmanager
def kernels_unavailable(reason: str = "not built (simulated)", warned: bool = False) -> Iterator[None]:
    """Within the block the compiled kernels look absent for ``reason`` (``kernels_available`` is
    False, ``unavailable_reason`` says ``reason``, the ops warn once unless ``warned``)."""
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
    """How the kernels multiply by the basis side ``U`` ``[n, n]`` (float32 or float64): ``"even_odd"``
    (half-size blocks), ``"dense"`` or ``"identity"`` (no product)."""
    _require_kernels("basis_layout")
    ne = torch.ops.blurdiff_ops._basis_layout(U)
    return "identity" if ne < 0 else "dense" if ne == 0 else "even_odd"


def map_path(path: str) -> contextlib.AbstractContextManager[None]:
    """Within the block the CUDA kernels take ``path``: ``"fused"`` (one block per plane),
    ``"split"`` (the fused kernel over several blocks per plane), ``"gemm"`` or ``"auto"`` (the cost
    model's choice); the CPU backend ignores it."""
    return _switched("map_path", torch.ops.blurdiff_ops._set_map_path, path)

"""Fused spectral-blur operators for blur diffusion (the contract: docs/design.md §2).

``to_spectral``, ``from_spectral`` and ``spectral_lincomb`` run on compiled C++/CUDA kernels when
the extension is built, else on ``blurdiff_ops.reference`` (plain PyTorch, also the oracle in
tests), with one warning that says why.
"""

from blurdiff_ops import reference
from blurdiff_ops._checks import table_dtype_for
from blurdiff_ops._loader import build_info, unavailable_reason
from blurdiff_ops.ops import from_spectral, kernels_available, spectral_lincomb, to_spectral

__all__ = [
    "to_spectral",
    "from_spectral",
    "spectral_lincomb",
    "kernels_available",
    "unavailable_reason",
    "build_info",
    "table_dtype_for",
    "reference",
]

"""Fused spectral-blur operators for blur diffusion.

``to_spectral``, ``from_spectral`` and ``spectral_lincomb`` (docs/design.md §2) run on compiled
C++/CUDA kernels when the extension is built, else on ``blurdiff_ops.reference`` (plain
PyTorch, also the oracle in tests), with one warning that says why.

Also public, for code built on the ops: ``table_dtype_for(data_dtype)`` (the dtype of the bases
and coefficient tables for data of that dtype), ``kernels_available(device_type)`` and
``unavailable_reason(device_type)`` (why the kernels for a device type are not loaded) and
``build_info()`` (how the loaded extension was built).
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

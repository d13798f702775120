"""Fused spectral-blur operators for blur diffusion.

``to_spectral``, ``from_spectral`` and ``spectral_lincomb`` (DESIGN.md §2) run on compiled
C++/CUDA kernels when the extension is built, else on ``blurdiff_ops.reference`` (plain
PyTorch, also the oracle in tests), with one warning that says why.
"""

from blurdiff_ops import reference
from blurdiff_ops.ops import from_spectral, kernels_available, spectral_lincomb, to_spectral

__all__ = ["to_spectral", "from_spectral", "spectral_lincomb", "kernels_available", "reference"]

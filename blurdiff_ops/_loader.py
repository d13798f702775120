"""Loads the compiled extension ``blurdiff_ops._C`` and says, once, why it could not.

Importing ``_C`` runs its ``TORCH_LIBRARY`` registrations, which put the ops under
``torch.ops.blurdiff_ops``. An extension built against another torch either fails to import
(undefined symbols) or imports with a stale ABI; both fall back to the reference.
"""

from __future__ import annotations

import warnings

import torch

_C = None
_reason = "not loaded yet"


def _load():
    global _C, _reason
    try:
        from blurdiff_ops import _C as ext
    except ImportError as e:
        text = str(e)
        if "undefined symbol" in text or "version" in text.lower():
            _reason = f"built for another torch ({text.splitlines()[0]}); reinstall blurdiff"
        else:
            _reason = "not built (install with `pip install --no-build-isolation .`)"
        return
    built_for = getattr(ext, "torch_version", "unknown")
    if built_for != torch.__version__:
        _reason = f"built for torch {built_for} but torch {torch.__version__} is running; reinstall blurdiff"
        return
    _C, _reason = ext, ""


_load()
_warned: set[str] = set()


def kernels_available(device_type: str = "cpu") -> bool:
    """Whether the compiled kernels for ``device_type`` ("cpu" or "cuda") are loaded."""
    return _C is not None and (device_type == "cpu" or (device_type == "cuda" and bool(_C.with_cuda)))


def unavailable_reason(device_type: str) -> str:
    """Why the compiled kernels for ``device_type`` are not loaded (public as
    ``blurdiff_ops.unavailable_reason``); "" where ``kernels_available(device_type)``."""
    if kernels_available(device_type):
        return ""
    if _C is None:
        return _reason
    if device_type == "cuda" and not _C.with_cuda:
        return "the extension was built without CUDA kernels (no CUDA toolkit, or BLURDIFF_NO_CUDA=1)"
    return f"no kernels for device type {device_type!r}"


def build_info() -> dict[str, object]:
    """How the loaded extension was built (public as ``blurdiff_ops.build_info``, see docs/design.md
    §2): ``torch_version``, ``cuda``, ``openmp``, ``cpu_avx512``; ``{}`` when none is loaded."""
    if _C is None:
        return {}
    return {
        "torch_version": _C.torch_version,
        "cuda": bool(_C.with_cuda),
        "openmp": bool(_C.with_openmp),
        "cpu_avx512": bool(_C.cpu_avx512),
    }


def warn_fallback(device_type: str) -> None:
    """Warn once per reason that an op runs on ``blurdiff_ops.reference`` instead of kernels."""
    reason = unavailable_reason(device_type)
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(
        f"blurdiff_ops: compiled kernels for {device_type} are not available ({reason}); "
        "using the plain-PyTorch reference ops instead",
        RuntimeWarning,
        stacklevel=3,
    )

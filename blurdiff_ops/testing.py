"""For tests of code built on the ops: run it as if the kernels were not built.

    with blurdiff_ops.testing.kernels_unavailable():
        y = blurdiff_ops.spectral_lincomb(...)   # the reference ops, with the fallback's warning

The ops then take the path a user without a compiled extension takes (``kernels_available`` is
False, ``unavailable_reason`` says ``reason``, and the once-per-reason fallback warning is
issued, unless ``warned``); everything is restored when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from blurdiff_ops import _loader

__all__ = ["kernels_unavailable"]


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

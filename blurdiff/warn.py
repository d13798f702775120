"""Warnings that point at the user's line, however deep in blurdiff (and torch's wrappers) they arise."""

from __future__ import annotations

import os
import sys
import warnings

import torch

__all__ = ["warn_at_caller"]


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the ``stacklevel`` of the first frame outside blurdiff and torch: a
    sampler is reached through ``BlurDiffusion.sample``, ``make_sampler`` and torch's ``no_grad``
    wrapper, so no fixed stacklevel names the line that called the library."""
    inside = tuple(os.path.dirname(m.__file__) + os.sep for m in (sys.modules["blurdiff"], torch))
    frame, level = sys._getframe(1), 2  # level 2: the caller of this function
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)

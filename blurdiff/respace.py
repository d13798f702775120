"""Deprecated: the samplers' module is :mod:`blurdiff.samplers` (this was its old name). Importing
this alias warns and re-exports the public names of :mod:`blurdiff.samplers`."""

import warnings

from blurdiff.samplers import *  # noqa: F403
from blurdiff.samplers import __all__  # noqa: F401

warnings.warn(
    "blurdiff.respace is deprecated and will be removed: import from blurdiff.samplers instead",
    DeprecationWarning,
    stacklevel=2,
)

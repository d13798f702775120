"""The device a command runs on: ``--device`` as given, else CUDA when there is a GPU."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a device (None: ``cuda`` when available, else ``cpu``), with a clear
    ValueError for a name that is not a device or for CUDA on a machine without it."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device

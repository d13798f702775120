"""Per-frequency tables (the process's and each sampler's): computed once in float64, handed out
per (device, table dtype)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from blurdiff_ops import table_dtype_for

Table = torch.Tensor | None


class TableCache:
    """Named tables as built (``float64``: floating tables in float64, None entries allowed) and
    their copies on each device in the table dtype for data of a dtype
    (:func:`blurdiff_ops.table_dtype_for`), contiguous, converted once per (device, table dtype).

    Integer tables (step numbers) keep their dtype and only move to the device.
    """

    def __init__(self, float64: Mapping[str, Table]):
        self.float64: dict[str, Table] = dict(float64)
        self._on: dict[tuple[torch.device, torch.dtype], dict[str, Table]] = {}

    def on(self, device, dtype: torch.dtype = torch.float32) -> dict[str, Table]:
        """The tables on ``device`` in the table dtype for data of ``dtype``."""
        key = (torch.device(device), table_dtype_for(dtype))
        if key not in self._on:
            device, dtype = key
            self._on[key] = {
                name: None if t is None else t.to(device, dtype if t.is_floating_point() else t.dtype).contiguous()
                for name, t in self.float64.items()
            }
        return self._on[key]

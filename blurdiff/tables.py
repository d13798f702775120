"""Per-frequency tables: computed once in float64, handed out per (device, table dtype).

The process (:class:`blurdiff.diffusion.BlurDiffusion`: its forward tables, the tables of
``reference_eps``) and every sampler (:class:`blurdiff.samplers.Sampler`: its step tables) keep
their tables in one :class:`TableCache` each.
"""

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
            self._on[key] = {name: _convert(table, *key) for name, table in self.float64.items()}
        return self._on[key]


def _convert(table: Table, device: torch.device, dtype: torch.dtype) -> Table:
    if table is None:
        return None
    if not table.is_floating_point():
        dtype = table.dtype
    return table.to(device=device, dtype=dtype).contiguous()

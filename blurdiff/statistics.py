"""What a run knows about its data: per-channel mean and std, and the power of every frequency.

Measured once on the training data, stored in every checkpoint (``state["data_stats"]``); the
samplers' Gaussian reference and the divergence guard's yardstick (docs/design.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

import blurdiff_ops

__all__ = ["DataStatistics", "estimate_data_statistics"]

#: Images a trainer measures (deterministic: the first of a fixed permutation, unflipped).
DEFAULT_IMAGES = 512
#: A spectral power below this is taken as this: a reference variance of 0 would make the
#: reference's ε̄ = x̄/σ blow up at the last steps.
MIN_POWER = 1e-6


@dataclass
class DataStatistics:
    """``spectral_power[h, w]`` = mean over images and channels of ``to_spectral(x)[h, w]²``
    (the second moment of each frequency in the process's basis, float64); channel means and
    standard deviations of the pixels; how many images they come from."""

    count: int
    channel_mean: list[float]
    channel_std: list[float]
    spectral_power: torch.Tensor

    @property
    def std(self) -> float:
        """The std of all pixel values, channels pooled."""
        m = sum(self.channel_mean) / len(self.channel_mean)
        second = sum(s * s + mu * mu for s, mu in zip(self.channel_std, self.channel_mean)) / len(self.channel_std)
        return max(second - m * m, 0.0) ** 0.5

    @property
    def reference_var(self) -> torch.Tensor:
        """The spectral power, floored at ``MIN_POWER``: the samplers' Gaussian reference."""
        return self.spectral_power.to(torch.float64).clamp_min(MIN_POWER)

    def to_state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (loads with ``weights_only=True``)."""
        return {
            "count": self.count,
            "channel_mean": [float(v) for v in self.channel_mean],
            "channel_std": [float(v) for v in self.channel_std],
            "spectral_power": self.spectral_power.to(torch.float64).cpu(),
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_state` as JSON data: the spectral power as nested lists of Python floats,
        whose repr round-trips float64 exactly (exports, diffusers configs); :meth:`from_state`
        reads it back."""
        state = self.to_state()
        return {**state, "count": int(self.count), "spectral_power": state["spectral_power"].tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, resolution) -> DataStatistics | None:
        """The statistics saved by :meth:`to_state` (None for checkpoints that have none); checks
        that they fit ``resolution``."""
        if not state:
            return None
        try:
            power = torch.as_tensor(state["spectral_power"], dtype=torch.float64)
            count, mean, std = state["count"], state["channel_mean"], state["channel_std"]
            stats = cls(count, [float(v) for v in mean], [float(v) for v in std], power)
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as e:
            raise ValueError(f"the checkpoint's data statistics are malformed: {e}") from e
        # What the samplers and the divergence guard compute with: a NaN std would switch the guard off.
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"the checkpoint's data statistics: count must be an integer of at least 1, not {count!r}")
        mean, std = stats.channel_mean, stats.channel_std
        if not mean or len(std) != len(mean) or not all(map(math.isfinite, mean + std)):
            raise ValueError(
                f"the checkpoint's data statistics: channel_mean and channel_std must be finite numbers, one per "
                f"channel, not {mean!r:.60} and {std!r:.60}"
            )
        if min(std) < 0:
            raise ValueError(f"the checkpoint's data statistics: channel_std must not be negative: {std}")
        if tuple(power.shape) != tuple(resolution) or not torch.isfinite(power).all() or (power < 0).any():
            raise ValueError(
                f"the checkpoint's spectral power is {tuple(power.shape)}, not finite and non-negative "
                f"at the process's resolution {tuple(resolution)}"
            )
        return stats


def estimate_data_statistics(process, batches: Iterable[torch.Tensor]) -> DataStatistics:
    """:class:`DataStatistics` of the images in ``batches`` (each ``[B, C, H, W]`` in [-1, 1] at the
    process's resolution), in float64, in the basis of ``process``."""
    tab = process.tables("cpu", torch.float64)
    count, power, total, total_sq = 0, None, None, None
    for x in batches:
        x = x.to("cpu", torch.float64)
        x_bar = blurdiff_ops.reference.to_spectral(x, tab["U_h"], tab["U_w"])
        p = x_bar.pow(2).sum(dim=(0, 1))
        s, sq = x.sum(dim=(0, 2, 3)), x.pow(2).sum(dim=(0, 2, 3))
        power, total, total_sq = (p, s, sq) if power is None else (power + p, total + s, total_sq + sq)
        count += x.shape[0]
    if not count:
        raise ValueError("no images to measure the data statistics on")
    C = total.shape[0]
    H, W = power.shape
    pixels = count * H * W
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    return DataStatistics(count, mean.tolist(), std.tolist(), power / (count * C))

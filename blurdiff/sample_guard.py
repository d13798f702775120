"""The sample guard and the names of a sample folder's files: what every sampler checks.

:class:`SampleStats` accumulates the raw (unclamped) statistics of generated images batch by
batch; :func:`divergence_reasons` says when they show a diverged sampler or network, and
:func:`warn_if_diverged` warns (:class:`SamplesDivergedWarning`) naming what produced them. The
file names are those of a folder of ``blurdiff sample`` (blurdiff/sample_folder.py), which
``blurdiff eval`` (blurdiff/quality.py) reads. A leaf: it imports no other module of the sampling
or quality code, so that the samplers, the folder writer and the yardstick all import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from blurdiff.warn import warn_at_caller

__all__ = [
    "DIVERGED_BEYOND_FRACTION",
    "DIVERGED_STD_RATIO",
    "FIGURES",
    "RAW_STATS_FILE",
    "SETTINGS_FILE",
    "STATS_FILE",
    "SampleStats",
    "SamplesDivergedWarning",
    "divergence_reasons",
    "warn_if_diverged",
]

# The files of a sample folder (blurdiff/sample_folder.py).
SETTINGS_FILE = "sample.json"
RAW_STATS_FILE = "raw_stats.jsonl"  # one line per batch: the statistics of its values before the clamp
STATS_FILE = "stats.json"  # their sum over the batches of the images, and the divergence verdict
FIGURES = "figures"  # a sub-folder, so image-folder readers (FID, spectra) see only the samples

# Divergence: more than this fraction of values beyond ±1.5, or a standard deviation this many
# times the data's (an image in [-1, 1] has std at most 1, so without the data's, std > 1).
DIVERGED_BEYOND_FRACTION = 0.01
DIVERGED_STD_RATIO = 3.0


class SamplesDivergedWarning(RuntimeWarning):
    """Generated images whose statistics show a diverged sampler or network."""


@dataclass
class SampleStats:
    """Per-channel sums of raw (unclamped) images, merged batch by batch; JSON-able."""

    count: int = 0  # values per channel
    total: list[float] = field(default_factory=list)
    total_sq: list[float] = field(default_factory=list)
    outside_1: int = 0
    beyond_1_5: int = 0
    nonfinite: int = 0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def of(cls, images: torch.Tensor) -> SampleStats:
        """The statistics of ``[B, C, H, W]`` images."""
        x = images.detach().to(torch.float64)
        finite = torch.isfinite(x)
        xf = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        dims = (0, 2, 3)
        a = x.abs()
        return cls(
            count=int(x.shape[0] * x.shape[2] * x.shape[3]),
            total=xf.sum(dims).tolist(),
            total_sq=(xf * xf).sum(dims).tolist(),
            outside_1=int((a > 1).sum()),  # NaN compares false: counted in nonfinite only
            beyond_1_5=int((a > 1.5).sum()),
            nonfinite=int((~finite).sum()),
            min=float(xf.min()) if x.numel() else math.inf,
            max=float(xf.max()) if x.numel() else -math.inf,
        )

    def merge(self, other: SampleStats) -> SampleStats:
        if not self.count:
            return SampleStats(**other.to_dict())
        if not other.count:
            return SampleStats(**self.to_dict())
        if len(self.total) != len(other.total):
            raise ValueError(f"cannot merge statistics of {len(self.total)} and {len(other.total)} channels")
        return SampleStats(
            count=self.count + other.count,
            total=[a + b for a, b in zip(self.total, other.total)],
            total_sq=[a + b for a, b in zip(self.total_sq, other.total_sq)],
            outside_1=self.outside_1 + other.outside_1,
            beyond_1_5=self.beyond_1_5 + other.beyond_1_5,
            nonfinite=self.nonfinite + other.nonfinite,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    @property
    def values(self) -> int:
        return self.count * len(self.total)

    @property
    def mean(self) -> list[float]:
        return [s / self.count for s in self.total]

    @property
    def std(self) -> list[float]:
        return [math.sqrt(max(q / self.count - m * m, 0.0)) for q, m in zip(self.total_sq, self.mean)]

    @property
    def overall_std(self) -> float:
        """The std of all values together (channels pooled)."""
        n = self.values
        m = sum(self.total) / n
        return math.sqrt(max(sum(self.total_sq) / n - m * m, 0.0))

    @property
    def outside_fraction(self) -> float:
        return self.outside_1 / self.values if self.values else 0.0

    @property
    def beyond_1_5_fraction(self) -> float:
        return self.beyond_1_5 / self.values if self.values else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What a reader wants to see (JSON-able; no infinities)."""
        if not self.count:
            return {"images_values": 0}
        return {
            "values": self.values,
            "mean": [round(v, 6) for v in self.mean],
            "std": [round(v, 6) for v in self.std],
            "overall_std": round(self.overall_std, 6),
            "outside_1_fraction": self.outside_fraction,
            "beyond_1_5_fraction": self.beyond_1_5_fraction,
            "nonfinite": self.nonfinite,
            "min": self.min,
            "max": self.max,
        }


def divergence_reasons(stats: SampleStats, data_std: float | None = None) -> list[str]:
    """Why ``stats`` look like a diverged sampler or network (empty: they do not).

    Non-finite values; more than 1 % of values beyond ±1.5; or a standard deviation more than
    3× the data's (``data_std``: the data's pooled std), or above 1 when it is unknown.
    """
    if not stats.count:
        return []
    reasons = []
    if stats.nonfinite:
        reasons.append(f"{stats.nonfinite} non-finite values")
    if stats.beyond_1_5_fraction > DIVERGED_BEYOND_FRACTION:
        reasons.append(
            f"{100 * stats.beyond_1_5_fraction:.1f}% of values beyond ±1.5 "
            f"(limit {100 * DIVERGED_BEYOND_FRACTION:.0f}%; range {stats.min:.3g} … {stats.max:.3g})"
        )
    std = stats.overall_std
    known = data_std is not None and math.isfinite(data_std) and data_std > 0  # NaN would compare false: no guard
    limit = DIVERGED_STD_RATIO * data_std if known else 1.0
    if std > limit:
        ref = f"{DIVERGED_STD_RATIO:g}× the data's {data_std:.3f}" if known else "1 (no usable data statistics)"
        reasons.append(f"standard deviation {std:.3g} above {ref}")
    return reasons


def warn_if_diverged(stats: SampleStats, data_std: float | None, what: str) -> list[str]:
    """Warn (:class:`SamplesDivergedWarning`) naming ``what`` (checkpoint, sampler) when the
    statistics show divergence; returns the reasons."""
    reasons = divergence_reasons(stats, data_std)
    if reasons:
        warn_at_caller(
            f"the samples of {what} look diverged: {'; '.join(reasons)}. Do not trust them: "
            f"check the training log (loss spikes) or use another sampler/checkpoint",
            SamplesDivergedWarning,
        )
    return reasons

"""The quality yardstick (docs/design.md §5): samples against data, beside the data's own noise floor.

The multi-scale sliced Wasserstein distance is Karras et al. 2018 ("Progressive Growing of GANs",
Table 1; ×10³ as there); the spectrum error is :mod:`blurdiff.spectrum`'s (all frequencies but DC,
and the upper half). Nothing here needs downloaded weights. :func:`evaluate_folder` is ``blurdiff eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from blurdiff.data import open_dataset
from blurdiff.images import load_image_folder
from blurdiff.safe_json import loads as json_loads
from blurdiff.sample_guard import STATS_FILE, SampleStats, divergence_reasons
from blurdiff.spectrum import spectrum_report
from blurdiff.warn import warn_at_caller

__all__ = [
    "SWD_SCALE",
    "evaluate",
    "evaluate_folder",
    "format_report",
    "collapse_pyramid",
    "laplacian_pyramid",
    "multiscale_swd",
    "sliced_wasserstein",
]

SWD_SCALE = 1e3  # Karras et al. report SWD ×10³
MIN_IMAGES = 16  # below this, even the noise floor of the SWD is mostly noise

# Verdict: a metric is "near the floor" within these multiples of the floor (plus an absolute
# slack for floors that are almost zero). Calibrated on the toy data: a trained run sampled with
# Eq. 12 or the ancestral integrator scores within 1.3x; the held-out data with Gaussian noise of
# std 0.15 added, or blurred by a 3x3 binomial, at least 2.5x (tests/test_quality.py).
GOOD_FACTOR = 2.0
POOR_FACTOR = 5.0


# ------------------------------------------------------------------------------------------------
# Multi-scale sliced Wasserstein distance (Karras et al. 2018)
# ------------------------------------------------------------------------------------------------

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5×5 binomial filter per channel, mirrored edges (Karras et al.'s pyramid filter)."""
    C = x.shape[1]
    k = (torch.outer(_BINOMIAL, _BINOMIAL) * gain).to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect" if min(x.shape[-2:]) > 2 else "replicate")  # reflect needs sides of 3+
    return F.conv2d(x, k.expand(C, 1, 5, 5), groups=C)


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _up(x: torch.Tensor, size) -> torch.Tensor:
    out = torch.zeros(*x.shape[:2], size[0], size[1], dtype=x.dtype, device=x.device)
    out[:, :, ::2, ::2] = x
    return _blur(out, gain=4.0)


def laplacian_pyramid(images: torch.Tensor, min_size: int = 8) -> list[torch.Tensor]:
    """Band-pass levels of ``[N, C, H, W]``, finest first; the last level is the low-pass image
    of the smallest side ``>= min_size``."""
    levels = []
    x = images.to(torch.float64)
    while min(x.shape[-2:]) // 2 >= min_size:
        low = _down(x)
        levels.append(x - _up(low, x.shape[-2:]))
        x = low
    levels.append(x)
    return levels


def collapse_pyramid(levels: list[torch.Tensor]) -> torch.Tensor:
    """The images a :func:`laplacian_pyramid` came from (exactly, up to rounding): each band added
    to the upsampled coarser image, coarsest first."""
    images = levels[-1]
    for band in reversed(levels[:-1]):
        images = band + _up(images, band.shape[-2:])
    return images


def _patches(level: torch.Tensor, per_image: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size``×``size`` patches of each image, ``[N·P, C, size²]``: every position when an image
    has at most ``per_image`` of them, else ``per_image`` random ones."""
    N, C, H, W = level.shape
    positions = (H - size + 1) * (W - size + 1)
    if positions <= per_image:
        flat = torch.arange(positions).expand(N, positions)
    else:
        flat = torch.randint(0, positions, (N, per_image), generator=generator)
    ys, xs = flat // (W - size + 1), flat % (W - size + 1)
    d = torch.arange(size)
    P = flat.shape[1]
    rows = (ys[..., None] + d)[..., :, None].expand(N, P, size, size)
    cols = (xs[..., None] + d)[..., None, :].expand(N, P, size, size)
    n = torch.arange(N)[:, None, None, None].expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[n, rows, cols]  # [N, P, size, size, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(N * P, C, size * size)


def _check_shapes(sets: Sequence[torch.Tensor], reference: torch.Tensor) -> None:
    for s in sets:
        if s.shape != reference.shape:
            raise ValueError(
                f"every set must match the reference's shape {tuple(reference.shape)}, got {tuple(s.shape)}"
            )


def sliced_wasserstein(
    sets: Sequence[torch.Tensor],
    reference: torch.Tensor,
    directions: int = 128,
    repeats: int = 4,
    generator: torch.Generator | None = None,
) -> list[float]:
    """For each of ``sets``: the mean over random unit directions of the 1-D Wasserstein-1
    distance between the projections of its rows and of the rows of ``reference`` (as many rows).

    The same directions serve every set, so their distances compare.
    """
    _check_shapes(sets, reference)
    totals = np.zeros(len(sets))
    for _ in range(repeats):
        dirs = torch.randn(reference.shape[1], directions, generator=generator, dtype=torch.float64)
        dirs /= dirs.norm(dim=0, keepdim=True)
        dirs = dirs.to(torch.float32)
        # Sorted along the last, contiguous axis: several times faster than along the rows.
        ref = np.sort((reference.to(torch.float32) @ dirs).T.numpy(), axis=1)
        for i, s in enumerate(sets):
            proj = np.sort((s.to(torch.float32) @ dirs).T.numpy(), axis=1)
            totals[i] += np.abs(proj - ref).mean(dtype=np.float64)
    return (totals / repeats).tolist()


def multiscale_swd(
    sets: Sequence[torch.Tensor],
    reference: torch.Tensor,
    patches_per_image: int = 128,
    patch: int = 7,
    directions: int = 128,
    repeats: int = 4,
    min_size: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """SWD ×10³ of each image set in ``sets`` against ``reference`` at every Laplacian level.

    Every set must hold as many images as ``reference``. Patches are normalised per channel
    with the *reference's* mean and std at that level (Karras et al. normalise each set by its
    own, which hides a wrong contrast or colour cast; here those count). The patch positions and
    the projection directions are drawn once per level and shared by every set, so their numbers
    compare. Returns ``[{"size": (h, w), "values": [swd of each set]}, ...]``, finest first.
    """
    _check_shapes(sets, reference)
    pyramids = [laplacian_pyramid(s, min_size) for s in sets]
    out = []
    for level, ref in enumerate(laplacian_pyramid(reference, min_size)):
        size = min(patch, *ref.shape[-2:])
        g = torch.Generator().manual_seed(seed + 7919 * level)
        ref_patches = _patches(ref, patches_per_image, size, g)
        mean = ref_patches.mean(dim=(0, 2), keepdim=True)
        std = ref_patches.std(dim=(0, 2), keepdim=True).clamp_min(1e-12)

        def descriptors(patches, mean=mean, std=std):
            return ((patches - mean) / std).flatten(1)

        values = sliced_wasserstein(
            [descriptors(_patches(p[level], patches_per_image, size, g)) for p in pyramids],
            descriptors(ref_patches),
            directions,
            repeats,
            torch.Generator().manual_seed(seed + level),
        )
        out.append({"size": tuple(ref.shape[-2:]), "values": [SWD_SCALE * v for v in values]})
    return out


# ------------------------------------------------------------------------------------------------
# The yardstick
# ------------------------------------------------------------------------------------------------


def _channel_stats(x: torch.Tensor) -> dict[str, list[float]]:
    x = x.to(torch.float64)
    return {"mean": x.mean(dim=(0, 2, 3)).tolist(), "std": x.std(dim=(0, 2, 3)).tolist()}


def _spectrum_errors(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    rep = spectrum_report(images, reference)
    freq, ratio = rep["frequencies"], np.abs(rep["log10_ratio"])
    return {"all": float(np.mean(ratio[freq > 0])), "high": rep["high_freq_mean_abs_log10_ratio"]}


def evaluate(
    samples: torch.Tensor,
    data: torch.Tensor,
    raw_stats: SampleStats | None = None,
    seed: int = 0,
    patches_per_image: int = 128,
) -> dict[str, Any]:
    """The yardstick of ``samples`` against ``data``, beside the data's own noise floor.

    ``samples`` is ``[n, C, H, W]`` in [-1, 1]; ``data`` holds at least ``2n`` images of the same
    shape (split into a reference set, the first ``n``, and a disjoint floor set, the next ``n``:
    pass them in random order). ``raw_stats`` are the statistics of the samples before any clamp
    (:class:`SampleStats`); without them the out-of-range fractions are those of ``samples``.

    Returns a JSON-able dict: ``metrics`` (name -> {"samples", "floor"}), ``channels``,
    ``swd_levels``, ``verdict`` ("good", "fair", "poor" or "diverged") and ``reasons``.
    """
    n = samples.shape[0]
    if samples.dim() != 4:
        raise ValueError(f"samples must be [N, C, H, W], got {tuple(samples.shape)}")
    if n < MIN_IMAGES:
        raise ValueError(f"the yardstick needs at least {MIN_IMAGES} samples, got {n}")
    if data.dim() != 4 or data.shape[1:] != samples.shape[1:]:
        raise ValueError(
            f"data images are {tuple(data.shape[1:])} but samples {tuple(samples.shape[1:])}: "
            f"compare at the same channels and resolution"
        )
    if data.shape[0] < 2 * n:
        raise ValueError(
            f"the yardstick needs twice as many data images as samples (a reference set and a "
            f"disjoint noise-floor set of {n} each), got {data.shape[0]} for {n} samples"
        )
    if raw_stats is None:
        raw_stats = SampleStats.of(samples)
    samples = samples.to(torch.float64).clamp(-1, 1)
    reference, floor = data[:n].to(torch.float64), data[n : 2 * n].to(torch.float64)

    metrics: dict[str, dict[str, float]] = {}
    levels = multiscale_swd([samples, floor], reference, patches_per_image=patches_per_image, seed=seed)
    for lv in levels:
        metrics[f"swd_{lv['size'][0]}x{lv['size'][1]}"] = {"samples": lv["values"][0], "floor": lv["values"][1]}
    avg = [float(np.mean([lv["values"][i] for lv in levels])) for i in (0, 1)]
    metrics["swd_avg"] = {"samples": avg[0], "floor": avg[1]}
    spec_s, spec_f = _spectrum_errors(samples, reference), _spectrum_errors(floor, reference)
    metrics["spectrum_error"] = {"samples": spec_s["all"], "floor": spec_f["all"]}
    metrics["spectrum_error_high"] = {"samples": spec_s["high"], "floor": spec_f["high"]}
    ch = {"samples": _channel_stats(samples), "reference": _channel_stats(reference), "floor": _channel_stats(floor)}
    for name in ("mean", "std"):
        ref = np.array(ch["reference"][name])
        diff = {k: float(np.max(np.abs(np.array(ch[k][name]) - ref))) for k in ("samples", "floor")}
        metrics[f"channel_{name}_error"] = diff
    metrics["outside_1"] = {"samples": raw_stats.outside_fraction, "floor": 0.0}
    metrics["beyond_1_5"] = {"samples": raw_stats.beyond_1_5_fraction, "floor": 0.0}

    verdict, reasons = _verdict(metrics, raw_stats, float(reference.std()))
    return {
        "n": n,
        "shape": list(samples.shape[1:]),
        "seed": seed,
        "metrics": metrics,
        "channels": ch,
        "raw": raw_stats.summary(),
        "verdict": verdict,
        "reasons": reasons,
    }


# The metrics the verdict weighs (and every SWD level), with an absolute slack added to their floor.
_VERDICT_METRICS = {"spectrum_error": 0.02, "channel_mean_error": 0.02, "channel_std_error": 0.02}
_SWD_SLACK = 2.0


def _verdict(metrics, raw_stats: SampleStats, data_std: float):
    diverged = divergence_reasons(raw_stats, data_std)
    if diverged:
        return "diverged", diverged
    worst, reasons = "good", []
    weighed = {name: _SWD_SLACK for name in metrics if name.startswith("swd_") and name != "swd_avg"}
    weighed.update(_VERDICT_METRICS)
    for name, slack in weighed.items():
        m = metrics[name]
        ratio = m["samples"] / (m["floor"] + slack)
        if ratio > GOOD_FACTOR:
            factor = POOR_FACTOR if ratio > POOR_FACTOR else GOOD_FACTOR
            worst = "poor" if worst == "poor" or factor == POOR_FACTOR else "fair"
            reasons.append(
                f"{name} {m['samples']:.3g} is more than {factor:g}× the floor ({m['floor']:.3g} + {slack:g})"
            )
    return worst, reasons


_LABELS = {
    "swd_avg": "SWD average (x1e3)",
    "spectrum_error": "spectrum error, all frequencies",
    "spectrum_error_high": "spectrum error, upper half",
    "channel_mean_error": "channel mean error (max)",
    "channel_std_error": "channel std error (max)",
    "outside_1": "outside [-1, 1], raw",
    "beyond_1_5": "beyond ±1.5, raw",
}


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned text table, samples beside the data's noise floor."""
    lines = [f"{'metric':34s} {'samples':>10s} {'data floor':>10s}"]
    for name, m in report["metrics"].items():
        label = _LABELS.get(name) or f"SWD {name[4:]} (x1e3)"
        if name in ("outside_1", "beyond_1_5"):
            s, f = f"{100 * m['samples']:.2f}%", f"{100 * m['floor']:.2f}%"
        else:
            s, f = f"{m['samples']:.4g}", f"{m['floor']:.4g}"
        lines.append(f"{label:34s} {s:>10s} {f:>10s}")
    ch = report["channels"]
    fmt = lambda v: "(" + ", ".join(f"{x:+.3f}" for x in v) + ")"  # noqa: E731
    lines.append(f"channel means: samples {fmt(ch['samples']['mean'])}, data {fmt(ch['reference']['mean'])}")
    lines.append(f"channel stds:  samples {fmt(ch['samples']['std'])}, data {fmt(ch['reference']['std'])}")
    reasons = "; ".join(report["reasons"]) or "(every number within a few times the data's own noise floor)"
    lines.append(f"verdict: {report['verdict']}{': ' if report['reasons'] else ' '}{reasons}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def load_data_images(path, resolution, count: int, seed: int = 0, exact: bool = True) -> torch.Tensor:
    """``count`` images of the data set at ``path`` (lmdb or image folder), drawn without
    replacement in a seeded random order, unflipped, resized to ``resolution`` as training
    resizes them: ``[count, 3, H, W]`` in [-1, 1]. With ``exact=False``, fewer when the data set
    holds fewer; else that is an error."""
    dataset = open_dataset(path, resolution)
    if exact and len(dataset) < count:
        raise ValueError(
            f"the data set {path} holds {len(dataset)} images; the yardstick needs {count} "
            f"(a reference set and a disjoint noise-floor set as large as the samples)"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([dataset[(int(i), False)] for i in order])


def evaluate_folder(samples, data, n: int | None = None, seed: int = 0) -> tuple[dict[str, Any], Path | None]:
    """``blurdiff eval``: the yardstick of a folder of samples against a data set (lmdb or image
    folder; held-out images, not the training set, to not reward memorisation).

    ``n`` images per set: by default all the samples, at most half the data set; when given, the
    folder must hold ``n`` images and the data set ``2n``. The out-of-range fractions use the raw
    values of the folder's ``stats.json`` (``blurdiff sample``), else those of the PNGs. Returns the
    report of :func:`evaluate` with ``samples`` and ``data`` added, and the ``stats.json`` used (or None).
    """
    samples_dir = Path(samples)
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"--samples {samples_dir} is not a folder")
    images = load_image_folder(samples_dir)
    count = n if n is not None else len(images)
    if count > len(images):
        raise ValueError(f"--n {count}: the folder {samples_dir} holds only {len(images)} images")
    if count < MIN_IMAGES:
        raise ValueError(f"the yardstick needs at least {MIN_IMAGES} samples, got {count} (in {samples_dir})")
    reference = load_data_images(data, tuple(images.shape[-2:]), 2 * count, seed=seed, exact=n is not None)
    count = min(count, len(reference) // 2)
    if count < MIN_IMAGES:
        raise ValueError(
            f"the yardstick needs at least {2 * MIN_IMAGES} data images (a reference and a noise-floor "
            f"set of {MIN_IMAGES}), {data} holds {len(reference)}"
        )
    raw, stats_file = None, samples_dir / STATS_FILE
    if stats_file.is_file():
        try:
            raw = SampleStats(**json_loads(stats_file.read_text())["raw"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{stats_file} is unreadable ({e}); remove it to evaluate the PNGs alone") from e
        values = len(images) * images.shape[-2] * images.shape[-1]  # per channel, as SampleStats counts
        if raw.count != values or len(raw.total) != images.shape[1]:
            # Images were added or removed since `blurdiff sample` wrote it: it describes others.
            warn_at_caller(
                f"{stats_file} describes {raw.count} values per channel, the {len(images)} images of "
                f"{samples_dir} hold {values}: not used (the out-of-range fractions are the PNGs')"
            )
            raw = None
    report = evaluate(images[:count], reference[: 2 * count], raw_stats=raw, seed=seed)
    report["samples"], report["data"] = str(samples_dir), str(data)
    return report, stats_file if raw is not None else None

"""A weights-free spectral check of generated images against data: radially averaged power spectra
(:func:`radial_power_spectrum`), samples against data bin by bin (:func:`spectrum_report`), and
their log-log plot, drawn with Pillow only (:func:`plot_spectra`).

Frequencies are in cycles per image (of the shorter side): bin ``k`` holds the 2D frequencies
whose radius ``sqrt(fy^2 + fx^2) * min(H, W)`` rounds to ``k``, for ``k = 0 .. min(H, W) // 2``
(corners beyond that radius are dropped). Power is ``|FFT|^2 / (H W)`` per channel in float64,
averaged over images and channels: white noise of variance ``v`` has flat power ``v``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from blurdiff.atomic import atomic_path
from blurdiff.images import font, load_image_folder

__all__ = ["plot_spectra", "radial_power_spectrum", "spectrum_report"]


def _as_tensor(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a tensor or array of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
    if images.shape[0] < 1:
        raise ValueError("no images")
    return images.detach().to("cpu", torch.float64)


def radial_power_spectrum(images) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of ``[N, C, H, W]`` images in [-1, 1].

    Returns ``(frequencies, power)``: integer radii ``0 .. min(H, W) // 2`` (cycles per image)
    and the mean power in each ring (float64 FFT per channel; mean over images and channels).
    """
    x = _as_tensor(images)
    _, _, h, w = x.shape
    power2d = (torch.fft.fft2(x).abs() ** 2).mean(dim=(0, 1)) / (h * w)  # [H, W]
    side = min(h, w)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None] * side
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :] * side
    radius = torch.sqrt(fy**2 + fx**2)
    bins = torch.round(radius).long().flatten()
    n_bins = side // 2 + 1
    keep = bins < n_bins
    values = power2d.flatten()[keep]
    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins[keep], values)
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins[keep], torch.ones_like(values))
    power = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    return np.arange(n_bins, dtype=np.float64), power.numpy()


def _images(source, limit: int | None) -> torch.Tensor:
    if isinstance(source, (str, os.PathLike)):
        return load_image_folder(source, limit)
    return _as_tensor(source)


def spectrum_report(samples_dir_or_tensor, data_dir_or_tensor, limit: int | None = None) -> dict:
    """Compare the radial power spectra of samples and data.

    Each argument is a folder of images or an ``[N, C, H, W]`` tensor in [-1, 1] (the same
    H, W for both). Returns a dict with ``frequencies``, ``power_samples``, ``power_data``,
    ``log10_ratio`` (per bin, ``log10(samples / data)``), ``high_freq_mean_abs_log10_ratio``
    (mean ``|log10_ratio|`` over bins above half the maximum frequency: 0 = the same high-frequency
    power, 0.3 = off by a factor 2 on average; blur diffusion's errors show there first: samples
    over-smooth or with noise left over), ``high_freq_bins``
    (which bins those are), and ``n_samples``/``n_data``.
    """
    samples = _images(samples_dir_or_tensor, limit)
    data = _images(data_dir_or_tensor, limit)
    if samples.shape[-2:] != data.shape[-2:]:
        raise ValueError(
            f"samples are {tuple(samples.shape[-2:])} but data {tuple(data.shape[-2:])}: the "
            f"spectra are only comparable at the same resolution"
        )
    freq, p_samples = radial_power_spectrum(samples)
    _, p_data = radial_power_spectrum(data)
    tiny = np.finfo(np.float64).tiny
    ratio = np.log10(np.maximum(p_samples, tiny)) - np.log10(np.maximum(p_data, tiny))
    high = freq > freq[-1] / 2
    return {
        "frequencies": freq,
        "power_samples": p_samples,
        "power_data": p_data,
        "log10_ratio": ratio,
        "high_freq_bins": freq[high],
        "high_freq_mean_abs_log10_ratio": float(np.mean(np.abs(ratio[high]))),
        "n_samples": int(samples.shape[0]),
        "n_data": int(data.shape[0]),
    }


# --------------------------------------------------------------------------- plotting

_COLOURS = [tuple(bytes.fromhex(c)) for c in "1f77b4 d62728 2ca02c ff7f0e 9467bd 8c564b e377c2 7f7f7f".split()]  # tab10


def plot_spectra(
    curves: dict,
    path: str | os.PathLike,
    size: tuple[int, int] = (720, 480),
    title: str = "radial power spectrum",
) -> Path:
    """Write a log-log line plot of ``{name: (frequencies, power)}`` to a PNG at ``path``.

    Points with non-positive frequency or power (the DC bin, empty bins) are left out. Axes
    have ticks at the powers of ten, labelled ``1eK``, and a legend names each curve.
    """
    if not curves:
        raise ValueError("no curves to plot")
    series = {}
    for name, (f, p) in curves.items():
        f = np.asarray(f, dtype=np.float64).ravel()
        p = np.asarray(p, dtype=np.float64).ravel()
        if f.shape != p.shape:
            raise ValueError(f"curve {name!r}: {f.shape[0]} frequencies but {p.shape[0]} powers")
        ok = (f > 0) & (p > 0) & np.isfinite(f) & np.isfinite(p)
        if ok.sum() < 1:
            raise ValueError(f"curve {name!r} has no positive finite points to plot")
        series[str(name)] = (np.log10(f[ok]), np.log10(p[ok]))

    xs = np.concatenate([s[0] for s in series.values()])
    ys = np.concatenate([s[1] for s in series.values()])
    x_lo, x_hi = math.floor(xs.min()), math.ceil(xs.max())
    y_lo, y_hi = math.floor(ys.min()), math.ceil(ys.max())
    x_hi = max(x_hi, x_lo + 1)
    y_hi = max(y_hi, y_lo + 1)

    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    label_font = font()
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot box (y0 top)

    def to_px(lx: float, ly: float) -> tuple[float, float]:
        px = x0 + (lx - x_lo) / (x_hi - x_lo) * (x1 - x0)
        py = y1 - (ly - y_lo) / (y_hi - y_lo) * (y1 - y0)
        return px, py

    def text(x: float, y: float, label: str, align: float = 0.0) -> None:  # align: 0.5 centres, 1 ends at x
        draw.text((x - align * draw.textlength(label, font=label_font), y), label, fill="black", font=label_font)

    # Grid and decade ticks.
    grid = (225, 225, 225)
    for e in range(x_lo, x_hi + 1):
        px, _ = to_px(e, y_lo)
        draw.line([(px, y0), (px, y1)], fill=grid)
        draw.line([(px, y1), (px, y1 + 5)], fill="black")
        text(px, y1 + 8, f"1e{e}", 0.5)
    for e in range(y_lo, y_hi + 1):
        _, py = to_px(x_lo, e)
        draw.line([(x0, py), (x1, py)], fill=grid)
        draw.line([(x0 - 5, py), (x0, py)], fill="black")
        text(x0 - 8, py - 7, f"1e{e}", 1.0)
    draw.rectangle([x0, y0, x1, y1], outline="black")
    text((x0 + x1) / 2, 8, title, 0.5)
    text((x0 + x1) / 2, height - 20, "frequency (cycles / image)", 0.5)
    text(6, 8, "power")

    # Curves.
    for i, (lf, lp) in enumerate(series.values()):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [to_px(a, b) for a, b in zip(lf, lp)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for px, py in pts:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)

    # Legend (top right).
    line_h = 16
    names = list(series)
    box_w = 40 + max(int(draw.textlength(n, font=label_font)) for n in names) + 10
    bx1, by0 = x1 - 8, y0 + 8
    bx0 = bx1 - box_w
    draw.rectangle([bx0, by0, bx1, by0 + line_h * len(names) + 8], fill="white", outline="black")
    for i, name in enumerate(names):
        colour = _COLOURS[i % len(_COLOURS)]
        ly = by0 + 4 + i * line_h + line_h / 2
        draw.line([(bx0 + 6, ly), (bx0 + 32, ly)], fill=colour, width=3)
        text(bx0 + 38, ly - 7, name)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path

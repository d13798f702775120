"""Figures of the process: ``blurdiff figures forward --data PATH --out FILE --preset NAME``.

``forward``: the forward process on real images. For each image, three labelled rows at
``t = 0 … N`` (evenly spaced columns):

- ``x_t``: a draw of ``x_t = U √Ā_t U^T x_0 + U √(1-Ā_t) U^T ε`` (one fixed ε per image);
- ``mean c2f``: the noise-free mean ``U √Ā_t U^T x_0`` of the preset's (coarse-to-fine) process;
- ``mean f2c``: the same mean with ``direction="fine_to_coarse"`` (``D`` replaced by ``1 - D``,
  the paper's ablation, Fig. 3), side by side with the row above.

``--normalize`` divides both means by ``√ᾱ_t`` (the noise schedule's share of ``√Ā_t``), which
leaves only the blur ``U D^{Σ f} U^T x_0``: the fade to grey hides it at large ``t``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from blurdiff.atomic import atomic_path, writable_target
from blurdiff.data import open_dataset
from blurdiff.diffusion import BlurDiffusion
from blurdiff.images import font, to_uint8, upscale_factor
from blurdiff.presets import get_preset

__all__ = ["forward_figure", "forward_process_figure", "forward_rows"]


# Pillow's decompression-bomb limit: every reader of a larger PNG warns (twice as large: refuses).
MAX_FIGURE_PIXELS = 89_478_485


def _time_columns(N: int, columns: int) -> list[int]:
    if columns < 2:
        raise ValueError(f"--columns must be at least 2, got {columns}")
    return sorted({round(N * c / (columns - 1)) for c in range(columns)})


def forward_rows(x0: torch.Tensor, process, times: Sequence[int], seed: int = 0, normalize: bool = False):
    """``(noisy, mean_c2f, mean_f2c)``, each ``[T, B, C, H, W]`` for ``times`` (0 = x_0 itself).

    ``process`` is the preset's ``BlurDiffusion``; the other direction is built from its config.
    """
    flipped = "fine_to_coarse" if process.config.direction == "coarse_to_fine" else "coarse_to_fine"
    other = BlurDiffusion(dataclasses.replace(process.config, direction=flipped), process.backend)
    if flipped == "coarse_to_fine":
        process, other = other, process  # c2f first whatever the preset's direction
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    alpha_bar = torch.cumprod(1 - process.betas, dim=0)
    zeros = torch.zeros_like(x0)
    noisy, c2f, f2c = [], [], []
    for t in times:
        if t == 0:
            for rows in (noisy, c2f, f2c):
                rows.append(x0)
            continue
        tt = torch.full((x0.shape[0],), t, dtype=torch.int64)
        scale = 1 / float(alpha_bar[t].sqrt()) if normalize else 1.0
        noisy.append(process.q_sample(x0, tt, noise))
        c2f.append(process.q_sample(x0, tt, zeros) * scale)
        f2c.append(other.q_sample(x0, tt, zeros) * scale)
    return torch.stack(noisy), torch.stack(c2f), torch.stack(f2c)


def forward_figure(
    x0: torch.Tensor,
    process,
    columns: int = 8,
    seed: int = 0,
    normalize: bool = False,
    scale: int | None = None,
    title: str = "",
) -> Image.Image:
    """The labelled figure (a PIL image) for images ``x0`` ``[B, C, H, W]`` in [-1, 1]."""
    times = _time_columns(process.num_timesteps, columns)
    B, _, H, W = x0.shape
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise ValueError(f"--scale must be a whole number of at least 1, got {scale!r}")
    s = scale or upscale_factor(max(H, W))
    ch, cw, pad = H * s, W * s, 2
    left, top = 90, 40 if title else 24
    width = left + len(times) * (cw + pad) + pad
    height = top + 3 * B * (ch + pad) + pad + 6 * (B - 1)
    if width * height > MAX_FIGURE_PIXELS:
        raise ValueError(
            f"the figure would be {width}x{height} pixels, more than the {MAX_FIGURE_PIXELS} a PNG reader "
            f"opens without a warning; use a smaller --scale (or fewer --columns or --n)"
        )
    noisy, c2f, f2c = forward_rows(x0, process, times, seed, normalize)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    label_font = font()
    if title:
        draw.text((left, 4), title, fill="black", font=label_font)
    for c, t in enumerate(times):
        label, x = f"t={t}", left + pad + c * (cw + pad)
        draw.text(
            (x + (cw - draw.textlength(label, font=label_font)) / 2, top - 16), label, fill="black", font=label_font
        )
    y = top + pad
    for b in range(B):
        if b:
            y += 6  # a gap between images
        for name, frames in (("x_t", noisy), ("mean c2f", c2f), ("mean f2c", f2c)):
            draw.text((4, y + ch / 2 - 7), f"#{b} {name}", fill="black", font=label_font)
            for c, arr in enumerate(to_uint8(frames[:, b])):  # [H, W, C] at each time
                cell = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
                img.paste(cell.resize((cw, ch), Image.NEAREST) if s > 1 else cell, (left + pad + c * (cw + pad), y))
            y += ch + pad
    return img


def forward_process_figure(
    data,
    out,
    preset: str,
    n: int = 4,
    start: int = 0,
    columns: int = 8,
    seed: int = 0,
    normalize: bool = False,
    scale: int | None = None,
) -> Path:
    """Read ``n`` images of ``data`` at the preset's resolution and write the figure to ``out``."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    writable_target(out)  # refused before the work, not after
    spec = get_preset(preset)
    process = BlurDiffusion(spec.process)
    if process.family != "lee":
        raise ValueError(
            f"figures forward shows the paper's process in its two directions; preset {preset} is of the "
            f"{process.family} family (scripts/head_to_head.py draws every family's forward process)"
        )
    ds = open_dataset(data, process.resolution)  # never empty: an empty data set is refused
    if not 0 <= start < len(ds):
        raise ValueError(f"--start {start} is outside the data set's {len(ds)} images")
    idx = range(start, min(start + n, len(ds)))
    x0 = torch.stack([ds[i] for i in idx]).float()
    title = (
        f"forward process, preset {preset}: {spec.process.blur_schedule} blur, "
        f"f_max={spec.process.f_max:.4g}, N={process.num_timesteps}"
        + (" (means / sqrt(alpha_bar_t))" if normalize else "")
    )
    img = forward_figure(x0, process, columns, seed, normalize, scale, title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out

"""Images in [-1, 1] to PNG files: single images, grids and strips (rows of a trajectory); a folder's
images as one npz (guided-diffusion's sample batches)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont

from blurdiff.atomic import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` (or ``[C, H, W]``) in [-1, 1] to uint8 ``[B, H, W, C]``; C is 1 or 3."""
    if images.dim() == 3:
        images = images[None]
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def upscale_factor(size: int, min_pixels: int = 64) -> int:
    """The nearest-neighbour factor that makes a figure cell of ``size`` pixels at least
    ``min_pixels`` wide (1 for cells that already are)."""
    return max(1, -(-min_pixels // size))


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """One image, written atomically (a partial file never carries the final name) and durably
    (fsynced: a sampled image that took a GPU minute survives a power cut)."""
    with atomic_path(path, durable=True) as tmp:
        _pil(to_uint8(image)[0]).save(tmp, format="PNG")


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``[B, C, H, W]`` into one uint8 image, ``nrow`` images per row (default: square)."""
    arr = to_uint8(images)
    B, H, W, C = arr.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(B))))
    rows = int(np.ceil(B / nrow))
    out = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        out[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = arr[i]
    return out


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    with atomic_path(path) as tmp:
        _pil(grid(images, nrow)).save(tmp, format="PNG")


def save_strips(frames: Sequence[torch.Tensor], path: str | os.PathLike) -> None:
    """``frames[j]`` is ``[B, C, H, W]`` at one time; each of the B images becomes a row."""
    stacked = torch.stack([f.detach().cpu() for f in frames], dim=1)  # [B, T, C, H, W]
    B, T = stacked.shape[:2]
    save_grid(stacked.reshape(B * T, *stacked.shape[2:]), path, nrow=T)


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` (a fixed-size bitmap font on Pillow < 10.1): labels
    of figures, with no font file to find."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def npz_name(n: int, height: int, width: int) -> str:
    """``samples_NxHxWx3.npz``: the name guided-diffusion gives its sample batches."""
    return f"samples_{n}x{height}x{width}x3.npz"


def save_npz(files: Sequence[str | os.PathLike], folder: str | os.PathLike) -> Path:
    """The image ``files`` (of one size), in the given order, as one uint8 ``[N, H, W, 3]`` array
    under the key ``arr_0`` in ``folder/samples_NxHxWx3.npz`` (written atomically): the batch
    format of guided-diffusion's evaluator (``np.load(path)["arr_0"]``). Read with the reader of
    FID and spectra (:func:`blurdiff.data.read_image`: RGB, a grayscale image's channel repeated),
    so the array holds exactly the pixels those see. Returns the path."""
    from blurdiff.data import read_image

    if not files:
        raise ValueError(f"no images to write as an npz under {folder}")
    first = read_image(files[0])
    batch = np.empty((len(files), *first.shape), dtype=np.uint8)  # filled in place: one copy in memory
    batch[0] = first
    for i, f in enumerate(files[1:], start=1):
        image = read_image(f)
        if image.shape != first.shape:
            raise ValueError(
                f"{os.fspath(f)} is {image.shape[1]}x{image.shape[0]} pixels, not "
                f"{first.shape[1]}x{first.shape[0]} like {os.fspath(files[0])}"
            )
        batch[i] = image
    path = Path(folder) / npz_name(len(files), first.shape[0], first.shape[1])
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=batch)
    return path

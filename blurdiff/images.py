"""Image files: which files are images (:data:`IMAGE_EXTENSIONS`), listing a folder's
(:func:`list_images`; :func:`list_image_files`, a folder's top level as FID and spectra read it),
decoding and reading them as 8-bit RGB (:func:`decode_image`, :func:`read_image`: the one reader of
the training data, FID and spectra; :func:`load_image_folder`, a folder as one tensor), and writing images in
[-1, 1] as PNG files (single images, grids, strips of a trajectory), a folder's images as one npz
(guided-diffusion's sample batches), and the label font of figures."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont

from blurdiff.atomic import atomic_path

#: What every reader (training data, FID, spectra) takes as an image file, case-insensitively:
#: the extensions pytorch-fid reads, so both compute FID over the same files of a folder.
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


class UndecodableDataError(RuntimeError):
    """Image data that cannot be decoded: an image file, or every record of a data set."""


# 16-bit grey: Pillow's own conversion to 8 bits clips (every value above 255 becomes white).
_GREY16_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, the same way for every reader.

    16-bit grey (PNG, PGM with any maxval, TIFF) is scaled by 1/257 (65535 -> 255), a palette
    with transparency goes through RGBA so its colours survive, and alpha is dropped (not
    composited). 16-bit RGB(A) PNGs and TIFFs reach here already reduced to 8 bits by Pillow.
    Floating-point grey (32-bit float TIFFs, mode ``F``) with values in ``[0, 1]`` is scaled by
    255, values in ``[0, 255]`` are kept; any other range (or NaN/inf) is a ``ValueError``.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _GREY16_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr * _float_grey_scale(arr) if img.mode == "F" else arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _float_grey_scale(arr: np.ndarray) -> float:
    # Pillow's own conversion clips to [0, 255], which turns the usual [0, 1] float image black.
    # Float images carry no range, so it is taken from the values: [0, 1] is the convention of
    # float image libraries, [0, 255] what Pillow assumes; anything else would be a guess.
    if not np.isfinite(arr).all():
        raise ValueError("a floating-point image with NaN or inf values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0.0 or hi > 255.0:
        raise ValueError(f"a floating-point image with values in [{lo:g}, {hi:g}], neither [0, 1] nor [0, 255]")
    return 255.0 if hi <= 1.0 else 1.0


def decode_image(data: bytes) -> Image.Image:
    """Encoded image bytes (an lmdb value, a file's content) as a loaded PIL image; raises one of
    :data:`DECODE_ERRORS` for bytes Pillow cannot decode."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# What Pillow raises for bytes it cannot decode (unknown format, truncated or corrupt data,
# a decompression bomb); the bytes are in memory, so no OSError here is about the disk.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]`` (see :func:`to_rgb`); the reader of FID and spectra.

    Errors opening or reading the file (missing, permissions) propagate as they are; data that
    cannot be decoded raises :class:`UndecodableDataError` naming the file.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        rgb = to_rgb(decode_image(raw))  # to_rgb too: a float image of no known range is named like bad data
    except DECODE_ERRORS as exc:
        raise UndecodableDataError(f"cannot decode the image {os.fspath(path)}: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


def file_identity(st: os.stat_result, path: str) -> tuple:
    """What makes two paths the same file (or folder): its inode, or the real path where the
    file system has none."""
    return ("ino", st.st_dev, st.st_ino) if st.st_ino else ("path", os.path.realpath(path))


def _image_entries(root: str, recursive: bool) -> Iterator[tuple[str, os.DirEntry]]:
    """``(relative path, entry)`` of the image files under ``root``, entering every folder once."""
    seen = {file_identity(os.stat(root), root)}
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel)) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        subfolders = []
        for e in entries:
            rel_name = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir():  # follows links: a linked folder is read, but never twice (no loops)
                if recursive and (ident := file_identity(e.stat(), e.path)) not in seen:
                    seen.add(ident)
                    subfolders.append(rel_name)
            elif e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS):  # dangling links: neither
                yield rel_name, e
        pending.extend(reversed(subfolders))  # depth first, in name order


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Image files (:data:`IMAGE_EXTENSIONS`) under ``folder``: relative ``/``-separated paths, sorted.

    The one listing of the training data, FID and spectra. Hidden files and folders are
    skipped, and so are dangling links. Links to folders are followed, but every folder is read
    once, so a link back up the tree (a loop) adds nothing; a file reached by two paths (a link
    to it, a hard link) is listed once, under the first of its paths.
    """
    first: dict[tuple, str] = {}  # file -> its first path, in path order
    for rel, e in sorted(_image_entries(os.fspath(folder), recursive), key=lambda found: found[0]):
        first.setdefault(file_identity(e.stat(), e.path), rel)
    return list(first.values())


def list_image_files(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files in ``folder`` (top level, sorted by name; see
    :func:`blurdiff.images.list_images`); at most ``limit``, evenly spaced."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder of images: {folder}")
    files = [folder / name for name in list_images(folder, recursive=False)]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        if len(files) > limit:
            n = len(files)
            files = [files[(i * n) // limit] for i in range(limit)]
    return files


def load_image_folder(folder: str | os.PathLike, limit: int | None = None) -> torch.Tensor:
    """The images in ``folder`` (top level, sorted; the listing of FID) as ``[N, 3, H, W]`` in [-1, 1]."""
    files = list_image_files(folder, limit)
    if not files:
        raise ValueError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) under {folder}")
    return load_images(files, folder)


def load_images(files, folder: str | os.PathLike) -> torch.Tensor:
    """Image ``files`` (of one size) as float64 ``[N, 3, H, W]`` in [-1, 1]; ``folder`` names
    them in errors."""
    arrays = [read_image(f) for f in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images under {folder} have different sizes: {sorted(sizes)}")
    batch = np.stack(arrays).astype(np.float64) / 127.5 - 1.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


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
    FID and spectra (:func:`read_image`: RGB, a grayscale image's channel repeated),
    so the array holds exactly the pixels those see. Returns the path."""

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

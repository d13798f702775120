"""A synthetic data set with natural-image statistics, and an lmdb -> PNG folder exporter.

The toy images follow the *dead-leaves* model (Matheron; Lee, Mumford & Huang 2001): opaque discs
of random colour fall on the image plane one after the other and occlude what lies beneath.
With radii drawn from a power law ``p(r) ~ r^-3`` between ``rmin`` and ``rmax`` the model is
scale invariant over that range, so the radially averaged power spectrum falls like ``1/f^2``,
as it does for natural photographs; the images also have sharp occluding edges and flat regions,
which is what a coarse-to-fine (blur) diffusion has to learn to synthesise.

Every image is rendered from its own ``numpy.random.default_rng([seed, i])`` stream, so image ``i``
is the same whatever ``n`` is. Images are written as an LSUN-format lmdb (keys: 40-hex ascii ids,
values: WEBP bytes) that :class:`blurdiff.data.LMDBImageDataset` reads like the real release.

Public functions (wired to ``blurdiff data toy`` / ``blurdiff data export`` by the CLI):

    make_toy_lmdb(out, n, size, seed=0, overwrite=False) -> str
    export_lmdb_to_folder(src, out, limit=None, resolution=None, overwrite=False) -> int
    render_dead_leaves(size, rng, ...) -> uint8 [size, size, 3]
    toy_image(i, size, seed=0) -> uint8 [size, size, 3]
    toy_key(i, seed=0) -> str
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import warnings

import numpy as np
from PIL import Image, features

log = logging.getLogger("blurdiff.data")

__all__ = [
    "render_dead_leaves",
    "toy_image",
    "toy_key",
    "encode_image",
    "make_toy_lmdb",
    "export_lmdb_to_folder",
    "webp_available",
]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _sample_radii(rng: np.random.Generator, k: int, rmin: float, rmax: float, alpha: float) -> np.ndarray:
    """``k`` radii from ``p(r) ~ r^-alpha`` on ``[rmin, rmax]`` (inverse CDF)."""
    u = rng.random(k)
    if abs(alpha - 1.0) < 1e-9:
        return rmin * (rmax / rmin) ** u
    e = 1.0 - alpha
    a, b = rmin**e, rmax**e
    return (a + u * (b - a)) ** (1.0 / e)


def _sample_colours(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` RGB colours in [0, 1]: a uniform luminance plus a moderate chroma offset.

    Fully independent uniform RGB channels look garish; natural colours are strongly
    correlated across channels, which this mimics.
    """
    lum = rng.random((k, 1))
    chroma = rng.normal(0.0, 0.18, size=(k, 3))
    return np.clip(lum + chroma, 0.0, 1.0)


def render_dead_leaves(
    size,
    rng: np.random.Generator,
    *,
    rmin: float | None = None,
    rmax: float | None = None,
    alpha: float = 3.0,
    supersample: int = 2,
    max_discs: int = 100_000,
) -> np.ndarray:
    """Render one dead-leaves image, ``uint8 [H, W, 3]``.

    ``size`` is an int or ``(H, W)``. Radii are in output pixels; defaults ``rmin = max(1, S/64)``
    and ``rmax = S/2`` (``S`` the shorter side). Discs are drawn front to back (each pixel takes
    the colour of the first disc that covers it) until every pixel is covered; only discs that
    touch the image are drawn, with the size bias of the full Poisson process kept by rejection
    (a disc of radius ``r`` touches the image with probability ~ ``(H+2r)(W+2r)``).
    ``supersample`` renders at that factor and box-averages (anti-aliasing; 1 turns it off).
    """
    if isinstance(size, int):
        h_out, w_out = size, size
    else:
        h_out, w_out = (int(s) for s in size)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    s_min = min(h_out, w_out)
    rmin = max(1.0, s_min / 64.0) if rmin is None else float(rmin)
    rmax = max(rmin, s_min / 2.0) if rmax is None else float(rmax)
    if not 0 < rmin <= rmax:
        raise ValueError(f"need 0 < rmin <= rmax, got rmin={rmin}, rmax={rmax}")
    ss = max(1, int(supersample))
    H, W = h_out * ss, w_out * ss
    r0, r1 = rmin * ss, rmax * ss

    img = np.zeros((H, W, 3), dtype=np.float32)
    uncovered = np.ones((H, W), dtype=bool)
    left = H * W
    drawn = 0
    chunk = 256
    max_weight = (H + 2 * r1) * (W + 2 * r1)
    while left > 0 and drawn < max_discs:
        r = _sample_radii(rng, chunk, r0, r1, alpha)
        keep = rng.random(chunk) * max_weight < (H + 2 * r) * (W + 2 * r)
        r = r[keep]
        m = r.shape[0]
        cy = -r + rng.random(m) * (H + 2 * r)
        cx = -r + rng.random(m) * (W + 2 * r)
        col = _sample_colours(rng, m).astype(np.float32)
        for j in range(m):
            rj, yj, xj = r[j], cy[j], cx[j]
            # pixel centres at integer + 0.5
            y0 = max(0, int(np.floor(yj - rj)))
            y1 = min(H, int(np.ceil(yj + rj)) + 1)
            x0 = max(0, int(np.floor(xj - rj)))
            x1 = min(W, int(np.ceil(xj + rj)) + 1)
            drawn += 1
            if y0 >= y1 or x0 >= x1:
                continue
            dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - yj)[:, None]
            dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - xj)[None, :]
            unc = uncovered[y0:y1, x0:x1]
            mask = (dy * dy + dx * dx <= rj * rj) & unc
            cnt = int(mask.sum())
            if cnt == 0:
                continue
            img[y0:y1, x0:x1][mask] = col[j]
            unc[mask] = False
            left -= cnt
            if left == 0:
                break
    if left > 0:  # max_discs reached: fill the few holes with one more colour
        img[uncovered] = _sample_colours(rng, 1).astype(np.float32)[0]
    if ss > 1:
        img = img.reshape(h_out, ss, w_out, ss, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def toy_image(i: int, size, seed: int = 0, **kwargs) -> np.ndarray:
    """Image ``i`` of the toy set with ``seed``: ``uint8 [H, W, 3]``, independent of ``n``."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(i)])
    return render_dead_leaves(size, rng, **kwargs)


def toy_key(i: int, seed: int = 0) -> str:
    """The LSUN-style 40-hex id of toy image ``i``: ``sha1(f"{seed}-{i}")``."""
    return hashlib.sha1(f"{seed}-{i}".encode("ascii")).hexdigest()


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

_WEBP_WARNED = False


def webp_available() -> bool:
    """Whether this Pillow can encode and decode WEBP."""
    return bool(features.check("webp"))


def encode_image(arr: np.ndarray, fmt: str = "WEBP") -> bytes:
    """Encode ``uint8 [H, W, 3]`` as ``fmt`` bytes: WEBP is lossless (exact pixels)."""
    fmt = fmt.upper()
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(arr), mode="RGB") if arr.ndim == 3 else Image.fromarray(arr)
    if fmt == "WEBP":
        im.save(buf, format="WEBP", lossless=True, quality=80, method=4, exact=True)
    elif fmt == "PNG":
        im.save(buf, format="PNG", compress_level=6)
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


def _resolve_format(fmt: str) -> str:
    global _WEBP_WARNED
    fmt = fmt.upper()
    if fmt == "WEBP" and not webp_available():
        if not _WEBP_WARNED:
            msg = "this Pillow has no WEBP support; writing PNG values instead (the reader decodes both)"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            _WEBP_WARNED = True
        return "PNG"
    return fmt


# --------------------------------------------------------------------------------------------
# Writing the toy lmdb
# --------------------------------------------------------------------------------------------


def _is_nonempty(path: str) -> bool:
    if os.path.isdir(path):
        return any(True for _ in os.scandir(path))
    return os.path.exists(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def make_toy_lmdb(
    out,
    n: int,
    size,
    seed: int = 0,
    *,
    overwrite: bool = False,
    fmt: str = "WEBP",
    commit_every: int = 256,
    **render_kwargs,
) -> str:
    """Write ``n`` dead-leaves images of ``size`` (int or ``(H, W)``) as an LSUN-format lmdb.

    ``out`` becomes a directory holding ``data.mdb``/``lock.mdb``; keys are the 40-hex ascii ids
    :func:`toy_key`, values WEBP bytes (lossless; PNG, with a warning, when Pillow has no WEBP).
    The lmdb is built in ``out + ".tmp"`` and renamed into place when complete, so an interrupted
    run never leaves a half-written ``out``. An existing non-empty ``out`` is refused
    (``FileExistsError``) unless ``overwrite=True``. Returns ``out``.
    """
    import lmdb

    out = os.fspath(out).rstrip("/\\") or os.fspath(out)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    if _is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    if os.path.exists(out) and not os.path.isdir(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not a directory")
    fmt = _resolve_format(fmt)

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = out + ".tmp"
    _remove(tmp)

    # Encoded images are smaller than raw RGB (PNG's worst case is raw plus a little);
    # the map is sparse on Linux, so be generous and grow on MapFullError anyway.
    per_image = hw[0] * hw[1] * 3 + 4096
    map_size = max(1 << 24, 2 * n * per_image + (1 << 20))
    env = lmdb.open(tmp, map_size=map_size, subdir=True, lock=True, readahead=False, meminit=False)
    try:
        start = 0
        while start < n:
            stop = min(n, start + max(1, int(commit_every)))
            records = [
                (toy_key(i, seed).encode("ascii"), encode_image(toy_image(i, hw, seed, **render_kwargs), fmt))
                for i in range(start, stop)
            ]
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in records:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    map_size *= 2
                    env.set_mapsize(map_size)
            start = stop
        env.sync(True)
    finally:
        env.close()

    if os.path.lexists(out):
        _remove(out)
    os.replace(tmp, out)
    log.info("wrote %d toy images (%dx%d, %s, seed %d) to %s", n, hw[0], hw[1], fmt, seed, out)
    return out


# --------------------------------------------------------------------------------------------
# Export lmdb (or image folder) -> numbered PNGs
# --------------------------------------------------------------------------------------------

_EXPORT_NAME = re.compile(r"^\d{6,}\.png$")


def export_lmdb_to_folder(src, out, limit: int | None = None, resolution=None, *, overwrite: bool = False) -> int:
    """Decode the records of ``src`` (lmdb, or an image folder) into ``out/000000.png`` ...

    Records are taken in key order (the reader's order). ``resolution`` (int or ``(H, W)``)
    resizes without cropping like the training reader; ``None`` keeps the native size.
    Undecodable records are skipped (not replaced), counted and logged, so the output is the set
    of good images. ``limit`` caps the number written. A non-empty ``out`` is refused unless
    ``overwrite=True``, which first deletes the numbered PNGs already there.
    Returns the number of PNGs written.
    """
    from blurdiff.data import open_dataset

    out = os.fspath(out)
    ds = open_dataset(src, resolution)  # raises FileNotFoundError / ValueError as documented
    if os.path.isdir(out) and _is_nonempty(out):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace the PNGs there")
        for e in os.scandir(out):
            if e.is_file() and _EXPORT_NAME.match(e.name):
                os.remove(e.path)
    elif os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a directory")
    os.makedirs(out, exist_ok=True)

    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    written = bad = 0
    for i in range(len(ds)):
        if limit is not None and written >= int(limit):
            break
        try:
            img = ds.read_image(i)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad record
            bad += 1
            ds.note_bad(i, exc)
            continue
        img.save(os.path.join(out, f"{written:06d}.png"), format="PNG")
        written += 1
    if written == 0 and len(ds) > 0 and (limit is None or int(limit) > 0):
        raise RuntimeError(f"no record of {src} could be decoded ({bad} bad records)")
    if bad:
        log.warning("export %s -> %s: skipped %d undecodable record(s)", src, out, bad)
    log.info("exported %d images from %s to %s", written, src, out)
    return written

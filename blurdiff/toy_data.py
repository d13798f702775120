"""A synthetic data set with natural-image statistics: ``blurdiff data toy``.

The toy images follow the *dead-leaves* model (Matheron; Lee, Mumford & Huang 2001): opaque discs
of random colour fall on the image plane one after the other and occlude what lies beneath.
With radii drawn from a power law ``p(r) ~ r^-3`` between ``rmin`` and ``rmax`` the model is
scale invariant over that range, so the radially averaged power spectrum falls like ``1/f^2``,
as it does for natural photographs; the images also have sharp occluding edges and flat regions,
which is what a coarse-to-fine (blur) diffusion has to learn to synthesise.

Every image is rendered from its own ``numpy.random.default_rng([seed, i])`` stream, so image ``i``
is the same whatever ``n`` is. Images are written as an LSUN-format lmdb (keys: 40-hex ascii ids,
values: WEBP bytes) that :class:`blurdiff.data.LMDBImageDataset` reads like the real release.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from blurdiff.data import encode_image, lmdb_value_format, write_lmdb_data_set

log = logging.getLogger("blurdiff.data")

__all__ = [
    "render_dead_leaves",
    "toy_image",
    "toy_key",
    "make_toy_lmdb",
]


def _hw(size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return hw  # type: ignore[return-value]


def _sample_radii(rng: np.random.Generator, k: int, rmin: float, rmax: float, alpha: float) -> np.ndarray:
    """``k`` radii from ``p(r) ~ r^-alpha`` on ``[rmin, rmax]`` (inverse CDF)."""
    u = rng.random(k)
    if abs(alpha - 1.0) < 1e-9:
        return rmin * (rmax / rmin) ** u
    e = 1.0 - alpha
    a, b = rmin**e, rmax**e
    return (a + u * (b - a)) ** (1.0 / e)


def _sample_colours(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` RGB colours in [0, 1]: a uniform luminance plus a moderate chroma offset (natural
    colours are strongly correlated across channels; independent uniform ones look garish)."""
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
    h_out, w_out = _hw(size)
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
    ``out`` is written and refused as :func:`blurdiff.data.write_lmdb_data_set` says. Returns ``out``.
    """
    out = os.fspath(out).rstrip("/\\") or os.fspath(out)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    hw = _hw(size)
    fmt = lmdb_value_format(fmt)

    def record(i: int) -> tuple[bytes, bytes]:
        return toy_key(i, seed).encode("ascii"), encode_image(toy_image(i, hw, seed, **render_kwargs), fmt)

    write_lmdb_data_set(out, n, record, hw[0] * hw[1] * 3 + 4096, commit_every, overwrite, "toy-lmdb")
    log.info("wrote %d toy images (%dx%d, %s, seed %d) to %s", n, hw[0], hw[1], fmt, seed, out)
    return out

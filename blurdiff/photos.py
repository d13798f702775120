"""A natural-image data set: random crops of the colour photographs scikit-image ships in its wheel.

``blurdiff data photos`` (README "Natural images") reads the nine photographs of :data:`PHOTOS` from
the installed package (``skimage/data/``, decoded with Pillow); without scikit-image, or a photograph
missing from it, :class:`PhotosUnavailableError` (an ``ImportError``) or ``FileNotFoundError``.

Crop ``i`` of a split with a seed is drawn from ``numpy.random.default_rng([seed, split, i])``, so
it is the same whatever ``n`` is: a photograph, uniformly among the nine; a square side,
log-uniform between ``lo = min(max(S, m/10), m/2)`` and ``m/2`` source pixels (``m`` the
photograph's shorter side: never upsampled, as far as the photograph allows, and a factor of five
in scale); a position, uniform among the squares of that side wholly inside the split's region;
a horizontal flip with probability 1/2; then a resize to ``S x S`` (Pillow BICUBIC, of the cropped
pixels only). The same seed gives the same bytes with the same Pillow (which decodes the three
JPEGs and resamples).

Held-out split: one quadrant of each photograph (:data:`PHOTOS` names which, cut at ``H // 2``,
``W // 2``); ``heldout`` crops lie wholly inside it, ``train`` crops never touch it, so no source
pixel is in both splits. Regions rather than whole photographs: the nine differ so much (a cat, a
nebula field, a retina, stained tissue ...) that holding two out would measure the shift between
photographs, not sample quality; with regions both splits mix the same photographs in the same
proportions at the same scales. The two motorcycle photographs are a stereo pair (a shift of a few
tens of pixels), so they hold out the same quadrant.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io
import logging
import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from blurdiff.data import encode_image, lmdb_value_format, write_lmdb_data_set

log = logging.getLogger("blurdiff.data")

__all__ = [
    "PHOTOS",
    "SPLITS",
    "INSTALL_HINT",
    "PhotosUnavailableError",
    "Crop",
    "load_photos",
    "heldout_region",
    "crop_spec",
    "photo_crop",
    "photo_key",
    "make_photos_lmdb",
]

#: The photographs, in a fixed order, with the quadrant each holds out (``"tl"``, ``"tr"``,
#: ``"bl"``, ``"br"``: top/bottom, left/right). The quadrants cycle so that the held-out set is not
#: one corner of every photograph; the stereo pair of motorcycles shares one (see the module's notes).
PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut.png", "tl"),
    ("chelsea.png", "tr"),
    ("coffee.png", "br"),
    ("hubble_deep_field.jpg", "bl"),
    ("ihc.png", "tl"),
    ("motorcycle_left.png", "tr"),
    ("motorcycle_right.png", "tr"),
    ("retina.jpg", "br"),
    ("rocket.jpg", "bl"),
)
SPLITS = ("train", "heldout")
INSTALL_HINT = 'pip install "blurdiff[photos]" (or: pip install scikit-image)'

# Crop sides, as fractions of the photograph's shorter side (see the module's notes).
MIN_FRACTION = 0.1
MAX_FRACTION = 0.5


class PhotosUnavailableError(ImportError):
    """scikit-image, whose wheel holds the photographs, is not installed."""


class Crop(NamedTuple):
    """Where a crop comes from: the photograph, the square ``[top, top + side) x [left, left + side)``
    in its pixels, and whether it is flipped left to right."""

    photo: str
    top: int
    left: int
    side: int
    flip: bool


def _skimage_data():
    """The ``skimage/data`` folder of the installed package (a ``Traversable``)."""
    try:
        import skimage  # noqa: F401 - only to say clearly when it is missing
    except ImportError as e:
        raise PhotosUnavailableError(
            f"the photos data set needs scikit-image, whose wheel ships the photographs it crops "
            f"(skimage/data/); install it: {INSTALL_HINT}"
        ) from e
    return importlib.resources.files("skimage") / "data"


def load_photos() -> dict[str, np.ndarray]:
    """The nine photographs as read-only uint8 RGB ``[H, W, 3]``, read from the installed
    scikit-image (never downloaded; decoded once per process): :class:`PhotosUnavailableError`
    without scikit-image, ``FileNotFoundError`` naming the files when some are missing from it."""
    folder = _skimage_data()  # every call: says so when the package has gone
    return _read_photos(str(folder), tuple(name for name, _ in PHOTOS))


@functools.lru_cache(maxsize=2)
def _read_photos(where: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    folder = _skimage_data()
    photos, missing = {}, []
    for name in names:
        entry = folder / name
        try:
            raw = entry.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            missing.append(name)
            continue
        with Image.open(io.BytesIO(raw)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        arr.setflags(write=False)
        photos[name] = arr
    if missing:
        import skimage

        version = getattr(skimage, "__version__", "?")
        raise FileNotFoundError(
            f"scikit-image {version} at {where} lacks the photograph(s) {', '.join(missing)}; the photos data "
            f"set reads them from the installed package and never downloads them. scikit-image 0.26 ships all "
            f"nine ({', '.join(n for n, _ in PHOTOS)}): reinstall or upgrade it ({INSTALL_HINT})"
        )
    return photos


def heldout_region(name: str, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the held-out quadrant of photograph ``name`` of that size
    (rows ``top … bottom - 1``, columns ``left … right - 1``)."""
    quadrant = dict(PHOTOS).get(name)
    if quadrant is None:
        raise ValueError(f"unknown photograph {name!r}; the photos are {[n for n, _ in PHOTOS]}")
    h2, w2 = height // 2, width // 2
    top, bottom = (0, h2) if quadrant[0] == "t" else (h2, height)
    left, right = (0, w2) if quadrant[1] == "l" else (w2, width)
    return top, bottom, left, right


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _draw_crop(rng: np.random.Generator, size: int, split: str, photos: dict[str, np.ndarray]) -> Crop:
    name = PHOTOS[int(rng.integers(len(PHOTOS)))][0]
    H, W = photos[name].shape[:2]
    hi = max(1, int(MAX_FRACTION * min(H, W)))
    lo = min(max(int(size), int(round(MIN_FRACTION * min(H, W)))), hi)
    side = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))) if hi > lo else lo
    side = min(max(side, lo), hi)
    flip = bool(rng.random() < 0.5)
    top, bottom, left, right = heldout_region(name, H, W)
    if split == "heldout":
        y = int(rng.integers(top, bottom - side + 1))
        x = int(rng.integers(left, right - side + 1))
        return Crop(name, y, x, side, flip)
    # Training: uniform among the positions whose square misses the held-out quadrant. Every
    # side <= m/2 fits in a training quadrant, so some position qualifies; draw candidates in
    # blocks until one does (at the largest side about 1 in 130 do, for a square photograph).
    while True:
        ys = rng.integers(0, H - side + 1, size=256)
        xs = rng.integers(0, W - side + 1, size=256)
        ok = (ys >= bottom) | (ys + side <= top) | (xs >= right) | (xs + side <= left)
        if ok.any():
            k = int(np.argmax(ok))
            return Crop(name, int(ys[k]), int(xs[k]), side, flip)


def _rng(i: int, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, 0x70686F746F, _check_split(split), int(i)])


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
        raise ValueError(f"size must be a positive int (the side of the square crops), got {size!r}")
    return int(size)


def crop_spec(i: int, size: int, seed: int = 0, split: str = "train") -> Crop:
    """Where image ``i`` of the split with ``seed`` is cut from (see the module's notes)."""
    photos = load_photos()
    return _draw_crop(_rng(i, seed, split), _check_size(size), split, photos)


def _render(photo: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    patch = Image.fromarray(photo[crop.top : crop.top + crop.side, crop.left : crop.left + crop.side])
    if crop.side != size:
        patch = patch.resize((size, size), resample=Image.Resampling.BICUBIC, reducing_gap=None)
    if crop.flip:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(patch, dtype=np.uint8)


def photo_crop(i: int, size: int, seed: int = 0, split: str = "train") -> np.ndarray:
    """Image ``i`` of the split with ``seed``: uint8 ``[size, size, 3]``, independent of ``n``."""
    crop = crop_spec(i, size, seed, split)
    return _render(load_photos()[crop.photo], crop, int(size))


def photo_key(i: int, seed: int = 0, split: str = "train") -> str:
    """The LSUN-style 40-hex id of image ``i``: ``sha1(f"photos-{split}-{seed}-{i}")``."""
    _check_split(split)
    return hashlib.sha1(f"photos-{split}-{seed}-{i}".encode("ascii")).hexdigest()


def make_photos_lmdb(
    out,
    n: int,
    size: int,
    seed: int = 0,
    split: str = "train",
    *,
    overwrite: bool = False,
    fmt: str = "WEBP",
    commit_every: int = 256,
) -> str:
    """Write ``n`` crops of ``size x size`` of the ``split`` as an LSUN-format lmdb at ``out``.

    ``out`` is written and refused as :func:`blurdiff.data.write_lmdb_data_set` says.
    :class:`PhotosUnavailableError` without scikit-image. Returns ``out``.
    """
    out = os.fspath(out).rstrip("/\\") or os.fspath(out)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    size = _check_size(size)
    _check_split(split)
    photos = load_photos()  # before touching the output: a missing package fails first
    fmt = lmdb_value_format(fmt)

    def record(i: int) -> tuple[bytes, bytes]:
        crop = _draw_crop(_rng(i, seed, split), size, split, photos)
        return photo_key(i, seed, split).encode("ascii"), encode_image(_render(photos[crop.photo], crop, size), fmt)

    write_lmdb_data_set(out, n, record, size * size * 3 + 4096, commit_every, overwrite, "photos-lmdb")
    log.info("wrote %d photo crops (%s split, %dx%d, %s, seed %d) to %s", n, split, size, size, fmt, seed, out)
    return out

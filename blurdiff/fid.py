"""Fréchet Inception Distance, computed the way pytorch-fid computes it, without scipy.

The paper (Lee et al., 2022) reports **FID-10K at 64x64**, hence ``DEFAULT_LIMIT``; FIDs of fewer
images are biased upwards and not comparable with it. As in pytorch-fid's ``fid_score``, the
images of a folder (its top level, sorted by name, read as :func:`blurdiff.images.read_image`
reads them) go through the FID Inception-v3 (:mod:`blurdiff.inception`), and the mean and
covariance (float64) of their pool3 features are its statistics. With ``limit``, a larger folder
contributes ``limit`` images evenly spaced over its sorted files. The real set's statistics are
cached under a hash of its chosen files (names, sizes, mtimes), the resolutions and the weights'
sha256. :func:`fid_report` returns the FID with what it rests on (:class:`FIDReport`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blurdiff.atomic import atomic_path
from blurdiff.devices import resolve_device
from blurdiff.images import IMAGE_EXTENSIONS, list_image_files, read_image
from blurdiff.inception import (
    FID_FEATURE_DIM,
    FID_INPUT_RESOLUTION,
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_SHA256_PREFIX,
    FIDInceptionV3,
    check_weights_file,
    is_published_weights,
    load_fid_inception,
    resolve_weights_path,
)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_LIMIT",
    "FIDReport",
    "activation_statistics",
    "compute_activations",
    "fid_report",
    "frechet_distance",
    "load_statistics",
    "load_statistics_with_count",
    "save_statistics",
]

DEFAULT_CACHE_DIR = Path("~/.cache/blurdiff/fid")
DEFAULT_LIMIT = 10000  # FID-10K, the paper's protocol
_CACHE_FORMAT = "blurdiff-fid-stats-v1"


# --------------------------------------------------------------------------- Fréchet distance


def _check_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"mu{which} must be a vector, got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"sigma{which} must be ({d}, {d}) to match mu{which} of shape ({d},), got {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"mu{which}/sigma{which} contain NaN or inf")
    return mu, sigma


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues clipped)."""
    s = 0.5 * (s + s.T)
    w, v = np.linalg.eigh(s)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, with the last
    trace as ``sum(sqrt(eigvalsh(sqrt(sigma1) sigma2 sqrt(sigma1))))`` (no scipy; exact for
    singular covariances too). Raises ``ValueError`` on mismatched shapes.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"the two sets of statistics have different dimensions: {mu1.shape[0]} vs "
            f"{mu2.shape[0]} (features from different networks or layers?)"
        )
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    m = root1 @ (0.5 * (sigma2 + sigma2.T)) @ root1
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    fid = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    # Rounding can leave a tiny negative number for (near-)identical statistics.
    return max(fid, 0.0) if fid > -1e-6 * max(1.0, float(np.trace(sigma1))) else fid


# --------------------------------------------------------------------------- images


def _same_size_runs(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """uint8 HWC arrays -> float ``[b, 3, H, W]`` batches in [0, 1], one per run of equal sizes (the
    network resizes each image to 299 as it would alone; pytorch-fid needs equal sizes)."""
    runs: list[list[torch.Tensor]] = []
    for a in arrays:
        t = torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        if runs and runs[-1][0].shape == t.shape:
            runs[-1].append(t)
        else:
            runs.append([t])
    return [torch.stack(r) for r in runs]


@torch.inference_mode()
def compute_activations(
    files: Sequence[str | os.PathLike],
    model: FIDInceptionV3 | Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """pool3 features ``[N, 2048]`` (float64) of the given image files."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(model, torch.nn.Module):
        model.eval()
    feats = []
    for start in range(0, len(files), batch_size):
        arrays = [read_image(f) for f in files[start : start + batch_size]]
        for batch in _same_size_runs(arrays):
            out = model(batch.to(device))
            if out.dim() == 4:  # a network returning [B, C, h, w] maps
                out = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1)).flatten(1)
            feats.append(out.detach().to("cpu", torch.float64).numpy())
    if not feats:
        return np.zeros((0, FID_FEATURE_DIM))
    return np.concatenate(feats, axis=0)


# --------------------------------------------------------------------------- statistics files


def save_statistics(path: str | os.PathLike, mu, sigma, count: int | None = None) -> Path:
    """Write ``mu``, ``sigma`` (and ``count``) to an ``.npz``, atomically."""
    path = Path(path).expanduser()
    mu, sigma = _check_stats(mu, sigma, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": mu, "sigma": sigma}
    if count is not None:
        arrays["count"] = np.asarray(int(count))
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from an ``.npz`` with arrays ``mu`` and ``sigma``.

    A file that is not such an ``.npz`` (truncated, another format, arrays missing) raises
    ``ValueError`` naming it; errors opening the file propagate as they are.
    """
    mu, sigma, _ = load_statistics_with_count(path)
    return mu, sigma


def load_statistics_with_count(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(mu, sigma, count)`` from an ``.npz``; ``count`` is ``None`` when the file stores none
    (pytorch-fid's ``--save-stats`` files do not). Errors as :func:`load_statistics`; a stored
    ``count`` that is not a whole number of images is a ``ValueError`` too."""
    path = Path(path).expanduser()
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:  # truncated, empty, pickled ...
        raise ValueError(f"{path} is not a readable .npz of FID statistics ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array under an .npz name
        raise ValueError(f"{path} is not an .npz of FID statistics (it holds one array, not mu and sigma)")
    with data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{path} is not an .npz of FID statistics: no {sorted(missing)} (holds {data.files})")
        try:
            mu, sigma = data["mu"], data["sigma"]
            count = data["count"] if "count" in data.files else None
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:  # a damaged member
            raise ValueError(f"{path} is not a readable .npz of FID statistics ({exc})") from exc
    mu, sigma = _check_stats(mu, sigma, "")
    if count is not None and (count.shape != () or count.dtype.kind not in "iu" or int(count) < 0):
        raise ValueError(f"{path}: its 'count' must be the number of images (a non-negative integer), got {count!r}")
    return mu, sigma, None if count is None else int(count)


def _is_npz(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".npz" and Path(path).is_file()


def activation_statistics(
    folder_or_npz: str | os.PathLike,
    model: FIDInceptionV3 | Callable[[torch.Tensor], torch.Tensor] | None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    limit: int | None = None,
):
    """Statistics of a set of images: ``(mu, sigma)`` of an ``.npz`` (``model`` unused, may be
    ``None``), or ``(mu, sigma, count)`` of a folder's images (:func:`blurdiff.images.list_image_files`,
    and ``limit``); ``ValueError`` for a folder of fewer than 2 images (no covariance)."""
    if _is_npz(folder_or_npz):
        return load_statistics(folder_or_npz)
    files = _image_files(Path(folder_or_npz), limit)
    if model is None:
        raise ValueError("a model is needed to compute statistics from images")
    return _folder_statistics(files, model, batch_size, device)


def _image_files(path: Path, limit: int | None) -> list[Path]:
    """The images of the folder ``path`` that FID takes (at least 2: a covariance needs them)."""
    if not path.is_dir():
        raise FileNotFoundError(f"neither a folder of images nor an .npz of statistics: {path}")
    files = list_image_files(path, limit)
    if len(files) < 2:
        raise ValueError(
            f"{path} holds {len(files)} image(s) ({'/'.join(IMAGE_EXTENSIONS)}); FID needs at "
            f"least 2 (and 10,000 for the paper's FID-10K)"
        )
    return files


def _folder_statistics(files: Sequence[Path], model, batch_size: int, device) -> tuple[np.ndarray, np.ndarray, int]:
    act = compute_activations(files, model, batch_size, device)
    return np.mean(act, axis=0), np.cov(act, rowvar=False), len(files)


# --------------------------------------------------------------------------- caching + FID


def _cache_key(folder: Path, files: Sequence[Path], image_size: list[int], weights_id: str) -> str:
    entries = []
    for f in files:
        st = f.stat()
        entries.append([f.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    payload = {
        "format": _CACHE_FORMAT,
        "files": entries,
        "image_resolution": image_size,
        "input_resolution": FID_INPUT_RESOLUTION,
        "weights": weights_id,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _cached_real_statistics(
    real: Path,
    model_factory: Callable[[], FIDInceptionV3],
    weights_id: Callable[[], str],
    batch_size: int,
    device,
    cache_dir: Path,
    limit: int | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu, sigma, count)`` of the real folder, from the cache when it holds them."""
    files = _image_files(real, limit)
    # The first image is opened before the weights are hashed and checked, so a folder of
    # non-images is reported as such rather than as a weights problem.
    with Image.open(files[0]) as img:
        image_size = list(img.size)
    key = _cache_key(real, files, image_size, weights_id())
    cache_file = cache_dir / f"{real.name or 'real'}-{key[:32]}.npz"
    if cache_file.is_file():
        try:
            mu, sigma, count = load_statistics_with_count(cache_file)
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite it
        else:
            # The key names exactly these files, so an entry written here stores their number;
            # one without it (or with another) is damaged and recomputed like an unreadable one.
            if count == len(files):
                return mu, sigma, count
    mu, sigma, count = _folder_statistics(files, model_factory(), batch_size, device)
    save_statistics(cache_file, mu, sigma, count)
    return mu, sigma, count


def _fid_label(n: int) -> str:
    """``FID-10K`` style: 10000 -> ``10K``, 2500 -> ``2500``."""
    return f"{n // 1000}K" if n >= 1000 and n % 1000 == 0 else str(n)


@dataclass(frozen=True)
class FIDReport:
    """A FID and what it rests on.

    Attributes:
        fid: the Fréchet distance.
        real_count, fake_count: images behind each side's statistics: for a folder, the number
            used (at most ``limit``); for an ``.npz``, the ``count`` it stores, ``None`` if none.
        weights_sha256: sha256 of the Inception weights file; ``None`` when both sides are
            ``.npz`` statistics (no network was run here).
        published_weights: whether that file is pytorch-fid's published one; ``None`` when no
            network was run (which weights made the ``.npz`` files is not recorded in them).
        limit: the cap on images per folder (``None``: all of them).
        real, fake, weights: the paths, for messages.
    """

    fid: float
    real_count: int | None
    fake_count: int | None
    weights_sha256: str | None
    published_weights: bool | None
    limit: int | None
    real: str = ""
    fake: str = ""
    weights: str | None = None

    def warnings(self) -> list[str]:
        """Why this number may not be comparable with published FIDs, one sentence each."""
        out = []
        if self.published_weights is False:
            out.append(
                f"the Inception weights {self.weights} are not the published pytorch-fid file "
                f"{FID_WEIGHTS_FILENAME} (sha256 {self.weights_sha256[:8]}..., expected "
                f"{FID_WEIGHTS_SHA256_PREFIX}...): this FID is not comparable with published FIDs"
            )
        if self.limit is not None:
            for side, path, count in (("real", self.real, self.real_count), ("fake", self.fake, self.fake_count)):
                if count is not None and count < self.limit:
                    out.append(self._short_side_warning(side, path, count))
        return out

    def _short_side_warning(self, side: str, path: str, count: int) -> str:
        # FID's estimate is biased upwards, the more so the fewer the images, so an FID-N with
        # N < limit is larger than the FID-limit it silently replaces.
        what = "holds statistics of only" if Path(path).suffix.lower() == ".npz" else "holds only"
        limit = _fid_label(self.limit)
        paper = " such as the paper's" if self.limit == DEFAULT_LIMIT else " (the paper reports FID-10K)"
        return (
            f"{side} {path} {what} {count} images, fewer than the limit of {self.limit}: this is "
            f"FID-{_fid_label(count)}, not FID-{limit}. FID is biased upwards on fewer images, so this "
            f"number is expected to be higher than FID-{limit} and is not comparable with FID-{limit} "
            f"numbers{paper}"
        )


def fid_report(
    real: str | os.PathLike,
    fake: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    allow_other_weights: bool = False,
) -> FIDReport:
    """FID between ``real`` and ``fake`` (each a folder of images or an ``.npz`` of statistics),
    with the image counts and the weights it rests on (:class:`FIDReport`).

    A ``real`` folder's statistics are cached in ``cache_dir`` (default ``~/.cache/blurdiff/fid``);
    ``fake`` is always recomputed. ``weights``: the pytorch-fid weights file (default: the torch hub
    cache; needed even on a cache hit, its sha256 is part of the key), checked as
    :func:`blurdiff.inception.check_weights_file` does. ``limit`` caps the images of each folder.
    Prints nothing; :meth:`FIDReport.warnings` says what makes the number incomparable.
    """
    device = resolve_device(device)
    real, fake = Path(real).expanduser(), Path(fake).expanduser()
    for p in (real, fake):
        if not (p.is_dir() or _is_npz(p)):
            raise FileNotFoundError(f"neither a folder of images nor an .npz of statistics: {p}")
    cache_dir = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()

    need_model = real.is_dir() or fake.is_dir()
    weights_path = resolve_weights_path(weights) if need_model else None

    @functools.cache
    def weights_id() -> str:
        # Checked once, when first needed (the real set's cache key, or the network): a cache
        # hit must not let unpublished weights through either.
        return check_weights_file(weights_path, allow_other_weights)

    @functools.cache
    def model_factory() -> FIDInceptionV3:
        weights_id()
        return load_fid_inception(weights_path, device=device, allow_other_weights=allow_other_weights)

    if real.is_dir():
        mu1, sigma1, real_count = _cached_real_statistics(
            real, model_factory, weights_id, batch_size, device, cache_dir, limit
        )
    else:
        mu1, sigma1, real_count = load_statistics_with_count(real)
    if fake.is_dir():
        mu2, sigma2, fake_count = activation_statistics(fake, model_factory(), batch_size, device, limit)
    else:
        mu2, sigma2, fake_count = load_statistics_with_count(fake)
    sha = weights_id() if need_model else None
    return FIDReport(
        fid=frechet_distance(mu1, sigma1, mu2, sigma2),
        real_count=real_count,
        fake_count=fake_count,
        weights_sha256=sha,
        published_weights=None if sha is None else is_published_weights(sha),
        limit=limit,
        real=str(real),
        fake=str(fake),
        weights=None if weights_path is None else str(weights_path),
    )

"""Image data sets (LSUN-format lmdb, image folders), a resumable sharded infinite loader, the lmdb
writer (of the toy and photos data sets) and the exporter of a data set as numbered PNGs.

Every data set returns float32 tensors ``[3, H, W]`` in ``[-1, 1]``: the image as RGB, squashed
*without cropping* to the target resolution (Pillow BICUBIC, antialiased when downscaling), as the
paper does for LSUN 64x64, then an optional random horizontal flip. ``ds[i]`` flips at random
(torch's global RNG, which ``torch.manual_seed`` and DataLoader workers seed) when ``hflip=True``;
``ds[(i, flip)]`` applies an explicit decision, which :func:`infinite_loader` uses so that flips
are a pure function of ``(seed, epoch, index)`` and a resumed run sees exactly the same batches.

Bad records: a record that cannot be decoded is skipped. ``ds[i]`` returns the next good record
``i+1, i+2, ...`` (wrapping around), so the data set never shrinks and its order stays
deterministic; ``ds.bad_records`` counts the skips (in every process, DataLoader workers
included), ``ds.bad_keys`` remembers the first few bad keys (of this process), and a warning is
logged on ``logging.getLogger("blurdiff.data")`` the first time a key turns out bad in a process.
If every record is bad, :class:`UndecodableDataError`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import operator
import os
import re
import threading
import warnings

import lmdb
import numpy as np
import torch
from PIL import Image, features

from blurdiff.images import (
    IMAGE_EXTENSIONS,
    UndecodableDataError,
    decode_image,
    file_identity,
    list_images,
    to_rgb,
)
from blurdiff.lmdb_file import BrokenLMDBError, check_lmdb_file
from blurdiff.output_folders import check_replaceable, new_output_folder

log = logging.getLogger("blurdiff.data")

__all__ = [
    "LMDBImageDataset",
    "ImageFolderDataset",
    "open_dataset",
    "is_lmdb_path",
    "resize_no_crop",
    "epoch_indices",
    "epoch_flips",
    "batches_per_epoch",
    "ResumableBatchSampler",
    "InfiniteLoader",
    "infinite_loader",
    "encode_image",
    "webp_available",
    "write_lmdb_records",
    "write_lmdb_data_set",
    "export_lmdb_to_folder",
]

#: Pillow's ``reducing_gap`` for resizing; ``None`` is exact (fair) resampling. Setting e.g. 3.0
#: speeds up large downscales with a result that is indistinguishable in practice.
RESIZE_REDUCING_GAP: float | None = None

_MAX_BAD_KEYS = 1000  # remembered in ``bad_keys`` (per process)
_MAX_WARNED_KEYS = 100_000  # keys warned about individually (per process)
_COUNTER_SLOTS = 64  # shared bad-record counter: slot 0 = main process, 1 + worker id otherwise


def _as_hw(resolution) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, (int, np.integer)):
        hw = (int(resolution), int(resolution))
    else:
        hw = tuple(int(r) for r in resolution)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"resolution must be a positive int or (H, W), got {resolution!r}")
    return hw  # type: ignore[return-value]


def resize_no_crop(img: Image.Image, resolution) -> Image.Image:
    """``img`` as RGB, squashed (no crop, aspect ratio not kept) to ``resolution`` (int or (H, W))."""
    img = to_rgb(img)
    hw = _as_hw(resolution)
    if hw is not None and (img.height, img.width) != hw:
        img = img.resize((hw[1], hw[0]), resample=Image.Resampling.BICUBIC, reducing_gap=RESIZE_REDUCING_GAP)
    return img


def _image_array(img: Image.Image) -> np.ndarray:
    """RGB (or grey) PIL image -> uint8 ``[H, W, 3]``, contiguous."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in ``[-1, 1]`` (a new tensor)."""
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


class _EncodedImageDataset(torch.utils.data.Dataset):
    """Shared logic: resizing, flips, bad-record skipping and counting. Subclasses define
    ``__len__``, ``key(index)`` (a record's name in messages) and ``_open_image(index)``."""

    path: str
    kind = "data set"

    def __init__(self, path, resolution, hflip: bool = False, cache_bytes: int = 0):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"data set path does not exist: {self.path}")
        self.resolution = _as_hw(resolution)
        self.hflip = bool(hflip)
        self.cache_bytes = cache_bytes  # decoded images kept per process when all fit (0: none)
        # A shared-memory counter, so skips in DataLoader workers are seen by the main process
        # (inherited across fork; shared through torch.multiprocessing's pickler under spawn).
        self._bad_counter = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self._init_process_state()

    # -- per-process state -------------------------------------------------------------------
    _PER_PROCESS = ("_bad_index", "_warned", "_warned_overflow", "bad_keys", "_decoded")  # not pickled

    def _init_process_state(self) -> None:
        self._decoded: dict[int, np.ndarray] = {}  # index -> uint8 [H, W, 3], when all fit cache_bytes
        self._bad_index: set[int] = set()
        self._warned: set[str] = set()
        self._warned_overflow = False
        self.bad_keys: list[str] = []

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._PER_PROCESS}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_process_state()

    # -- reading -----------------------------------------------------------------------------
    @property
    def bad_records(self) -> int:
        """How many times a bad record was skipped, summed over this process and its workers."""
        return int(self._bad_counter.sum())

    def read_image(self, index: int) -> Image.Image:
        """Record ``index`` decoded, RGB, resized to the resolution (native size if ``None``);
        raises whatever decoding raises (no skipping)."""
        return resize_no_crop(self._open_image(index), self.resolution)

    def _decoded_array(self, index: int) -> np.ndarray | None:
        """Record ``index`` as uint8 ``[H, W, 3]``, or None when bad. Kept when the whole data set
        fits ``cache_bytes``: later epochs skip the decode (the same values: decoding is deterministic)."""
        if index in self._decoded:
            return self._decoded[index]
        img = self._read_or_skip(index)
        arr = None if img is None else _image_array(img)
        if arr is not None and self.resolution and len(self) * 3 * math.prod(self.resolution) <= self.cache_bytes:
            self._decoded[index] = arr
        return arr

    def _read_or_skip(self, index: int) -> Image.Image | None:
        """:meth:`read_image`, or None for a bad record (counted by :meth:`note_bad`)."""
        try:
            return self.read_image(index)
        except BrokenLMDBError:
            raise  # the file, not the record: every later read would fail too
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad record
            self.note_bad(index, exc)
            return None

    def note_bad(self, index: int, exc: BaseException | None = None) -> None:
        """Count one skip of record ``index``; warn the first time its key is bad (per process)."""
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)
        self._bad_counter[slot] += 1
        self._bad_index.add(index)
        key = self.key(index)
        if key in self._warned:
            return
        if len(self.bad_keys) < _MAX_BAD_KEYS:
            self.bad_keys.append(key)
        if len(self._warned) < _MAX_WARNED_KEYS:
            self._warned.add(key)
            why = f"{type(exc).__name__}: {exc}" if exc is not None else "previously failed"
            log.warning("%s %s: skipping undecodable record %d (key %r): %s", self.kind, self.path, index, key, why)
        elif not self._warned_overflow:
            self._warned_overflow = True
            log.warning("%s %s: too many bad records; further ones are counted but not logged", self.kind, self.path)

    def _parse_index(self, item) -> tuple[int, bool]:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise TypeError(f"index must be an int or (int, flip), got {item!r}")
            index, flip = operator.index(item[0]), bool(item[1])
        else:
            index = operator.index(item)
            flip = self.hflip and bool(torch.rand(()) < 0.5)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {item!r} out of range for {self.kind} of length {n}")
        return index, flip

    def __getitem__(self, item) -> torch.Tensor:
        j, flip = self._parse_index(item)
        n = len(self)
        for _ in range(n):
            if j in self._bad_index:
                self.note_bad(j)
            elif (arr := self._decoded_array(j)) is not None:
                x = _array_to_tensor(arr)
                return x.flip(-1).contiguous() if flip else x
            j = (j + 1) % n
        raise UndecodableDataError(f"every one of the {n} records of {self.kind} {self.path} is undecodable")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, resolution={self.resolution}, hflip={self.hflip}, len={len(self)})"
        )


# -- LMDB --------------------------------------------------------------------------------------


# py-lmdb refuses to open the same environment (data file) twice in one process, and a handle
# inherited through fork keeps that guard armed until it is closed in the child. So environments
# are shared through this per-process registry: keyed by the data file's identity, refcounted by
# the data sets using them, and an entry inherited from the parent is closed (the child's copy of
# the mapping only) and reopened on first use in the child.
_ENVS: dict[tuple, list] = {}  # file id -> [env, pid, users]
_ENVS_LOCK = threading.Lock()


def _data_file(path: str, subdir: bool) -> str:
    return os.path.join(path, "data.mdb") if subdir else path


def _acquire_env(path: str, subdir: bool):
    """``(env, key)``: this process's read-only environment of the lmdb at ``path``; a data file
    that is truncated or not an lmdb raises ``BrokenLMDBError`` before it is mapped."""
    data_file = _data_file(path, subdir)
    key = file_identity(os.stat(data_file), data_file)
    pid = os.getpid()
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is not None and entry[1] != pid:
            with contextlib.suppress(Exception):
                entry[0].close()  # the inherited copy; unmaps in this process only
            entry = None
        if entry is None:
            check_lmdb_file(data_file)
            flags = dict(subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
            try:  # the path as bytes: py-lmdb encodes a str as strict UTF-8, which some paths are not
                env = lmdb.open(os.fsencode(path), **flags)
            except lmdb.Error as e:
                raise _broken(data_file, e) from e
            entry = _ENVS[key] = [env, pid, 0]
        entry[2] += 1
        return entry[0], key


def _broken(data_file: str, e: lmdb.Error) -> BrokenLMDBError:
    return BrokenLMDBError(f"the lmdb data file {data_file} cannot be read: {_first_line(e)}; copy the data set again")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _release_env(key: tuple) -> None:
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None or entry[1] != os.getpid():
            return
        entry[2] -= 1
        if entry[2] <= 0:
            del _ENVS[key]
            entry[0].close()


def is_lmdb_path(path) -> bool:
    """A directory that holds ``data.mdb``, or a ``.mdb`` file."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return os.path.isfile(os.path.join(p, "data.mdb"))
    return os.path.isfile(p) and p.endswith(".mdb")


class LMDBImageDataset(_EncodedImageDataset):
    """An LSUN-format lmdb: keys are image ids, values encoded image bytes (webp, png, jpeg ...).

    ``path`` is the lmdb directory (holding ``data.mdb``) or the ``.mdb`` file itself. The
    environment is opened read-only, lazily in each process (and reopened after a fork), so the
    data set is safe with DataLoader workers. The keys are read once, into a compact bytes blob
    plus an offset array (no per-key Python objects for forked workers to copy), in key (byte) order.
    """

    kind = "lmdb"
    _PER_PROCESS = _EncodedImageDataset._PER_PROCESS + ("_env", "_pid")

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._env = self._pid = None

    def __init__(self, path, resolution, hflip: bool = False, cache_bytes: int = 0):
        super().__init__(path, resolution, hflip, cache_bytes)
        p = self.path
        if os.path.isdir(p) and not os.path.isfile(os.path.join(p, "data.mdb")):
            raise FileNotFoundError(f"not an lmdb (no data.mdb in the directory): {p}")
        self._subdir = os.path.isdir(p)
        try:
            with self._acquire_env().begin(buffers=False) as txn:
                keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        except lmdb.Error as e:
            raise _broken(_data_file(p, self._subdir), e) from e
        finally:
            self.close()
        if not keys:
            raise ValueError(f"empty data set: the lmdb {p} holds no records")
        lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
        self._key_offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._key_offsets[1:])
        self._key_blob = b"".join(keys)
        del keys

    def _acquire_env(self):
        """This process's environment for the lmdb (shared by the data sets reading it)."""
        pid = os.getpid()
        if self._env is None or self._pid != pid:
            # A handle inherited through fork is not ours to use; the registry reopens.
            self._env, self._env_key = _acquire_env(self.path, self._subdir)
            self._pid = pid
        return self._env

    def __len__(self) -> int:
        return len(self._key_offsets) - 1

    def raw_key(self, index: int) -> bytes:
        return self._key_blob[self._key_offsets[index] : self._key_offsets[index + 1]]

    def key(self, index: int) -> str:
        return self.raw_key(index).decode("ascii", errors="backslashreplace")

    def read_bytes(self, index: int) -> bytes:
        k = self.raw_key(index)
        try:
            with self._acquire_env().begin(buffers=False) as txn:
                v = txn.get(k)
        except lmdb.Error as e:
            raise _broken(_data_file(self.path, self._subdir), e) from e
        if v is None:
            raise KeyError(f"key {k!r} vanished from {self.path}")
        return v

    def _open_image(self, index: int) -> Image.Image:
        return decode_image(self.read_bytes(index))

    def close(self) -> None:
        """Release this process's environment handle (reopened on the next read)."""
        if self._env is not None and self._pid == os.getpid():
            _release_env(self._env_key)
        self._env = self._pid = None

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown, half-built object
            self.close()


# -- Image folder ------------------------------------------------------------------------------


class ImageFolderDataset(_EncodedImageDataset):
    """Every image file under ``path`` (see :func:`list_images`: recursive, case-insensitive
    extensions, hidden files and folders skipped, no file twice), sorted by relative path."""

    kind = "image folder"

    def __init__(self, path, resolution, hflip: bool = False, cache_bytes: int = 0):
        super().__init__(path, resolution, hflip, cache_bytes)
        p = self.path
        if not os.path.isdir(p):
            raise ValueError(f"not a directory of images: {p}")
        files = list_images(p)
        if not files:
            raise ValueError(f"empty data set: no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images under {p}")
        self.files = np.array(files)  # one numpy object, not a list of str (cheap to fork)

    def __len__(self) -> int:
        return len(self.files)

    def key(self, index: int) -> str:
        return str(self.files[index])

    def _open_image(self, index: int) -> Image.Image:
        with open(os.path.join(self.path, str(self.files[index])), "rb") as f:
            return decode_image(f.read())


def open_dataset(path, resolution, hflip: bool = False, cache_bytes: int = 0) -> _EncodedImageDataset:
    """An :class:`LMDBImageDataset` for an lmdb (a directory holding ``data.mdb``, or a ``.mdb``
    file), else an :class:`ImageFolderDataset`; ``cache_bytes``: keep the decoded images in memory
    when all fit (uint8, per process). A missing path raises ``FileNotFoundError``."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"data set path does not exist: {p}")
    if is_lmdb_path(p):
        return LMDBImageDataset(p, resolution, hflip, cache_bytes)
    if os.path.isdir(p):
        return ImageFolderDataset(p, resolution, hflip, cache_bytes)
    raise ValueError(f"not a data set (expected an lmdb directory, a .mdb file or an image folder): {p}")


# -- Deterministic, sharded, resumable infinite loading ----------------------------------------


def epoch_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> list[int]:
    """The data-set indices rank ``rank`` sees in ``epoch``, in order.

    Identical to ``DistributedSampler(ds, world_size, rank, shuffle, seed, drop_last=True)``
    after ``set_epoch(epoch)``: ``randperm(n)`` from a generator seeded ``seed + epoch``,
    truncated to a multiple of ``world_size``, then ``[rank::world_size]``.
    """
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) + int(epoch))  # DistributedSampler's convention
        perm = torch.randperm(n, generator=g).tolist()
    else:
        perm = list(range(n))
    total = (n // world_size) * world_size
    return perm[rank:total:world_size]


def epoch_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Per-index horizontal-flip decisions (bool ``[n]``) of ``epoch``; the same on every rank."""
    seed = ((int(seed) + int(epoch)) ^ 0x5DEECE66D) & 0x7FFFFFFFFFFFFFFF  # not the permutation's stream
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches each rank gets per epoch (``drop_last`` at both the shard and batch level)."""
    return (n // world_size) // batch_size


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields batches of indices forever, starting at global batch number ``start_batch``.

    Batch ``b`` (per rank) belongs to epoch ``b // batches_per_epoch`` at position
    ``b % batches_per_epoch``; its indices are ``epoch_indices(...)[pos*B:(pos+1)*B]``. With
    ``flips=True`` the items are ``(index, flip)`` pairs, the flips from :func:`epoch_flips`.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        shuffle: bool = True,
        flips: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_batch, self.shuffle, self.flips = int(start_batch), bool(shuffle), bool(flips)
        self.batches_per_epoch = batches_per_epoch(self.n, self.batch_size, self.world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data set of {self.n} images is too small for batch_size={self.batch_size} x "
                f"world_size={self.world_size} with drop_last"
            )

    def position(self, batch: int) -> tuple[int, int]:
        """``(epoch, batch index within the epoch)`` of global batch number ``batch``."""
        return divmod(int(batch), self.batches_per_epoch)

    def __iter__(self):
        epoch, pos = self.position(self.start_batch)
        B = self.batch_size
        while True:
            idx = epoch_indices(self.n, self.seed, epoch, self.rank, self.world_size, self.shuffle)
            flip = epoch_flips(self.n, self.seed, epoch).tolist() if self.flips else None
            for p in range(pos, self.batches_per_epoch):
                batch = idx[p * B : (p + 1) * B]
                yield [(i, flip[i]) for i in batch] if flip is not None else batch
            epoch, pos = epoch + 1, 0


class InfiniteLoader:
    """Iterator returned by :func:`infinite_loader`; ``next_batch`` is the number of the batch
    the next ``next()`` returns (= ``start_batch`` + batches yielded so far): save it in a
    checkpoint and pass it back as ``start_batch`` to resume."""

    def __init__(
        self, dataset, sampler: ResumableBatchSampler, num_workers: int, pin_memory: bool, prefetch_factor: int | None
    ):
        self.dataset = dataset
        self.sampler = sampler
        self.next_batch = sampler.start_batch
        kwargs = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor is not None else {}
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, **kwargs
        )
        self._it = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def position(self) -> tuple[int, int]:
        """``(epoch, batch within epoch)`` of the next batch."""
        return self.sampler.position(self.next_batch)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self._loader)
        batch = next(self._it)
        self.next_batch += 1
        return batch

    def close(self) -> None:
        """Stop the workers (also happens when the loader is garbage collected)."""
        self._it = None


def infinite_loader(
    dataset,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    *,
    shuffle: bool = True,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> InfiniteLoader:
    """An endless iterator over batches ``[batch_size, 3, H, W]`` of ``dataset``.

    Order: each rank's :func:`epoch_indices` of epoch ``e``, cut into :func:`batches_per_epoch`
    full batches (the remainder is dropped), so ranks see disjoint samples within an epoch and the
    same number of batches. If ``dataset.hflip`` is set (the data sets of this module), the flip
    of each sample is also fixed by ``(seed, epoch, index)``, not by any process RNG.

    Resume contract: the stream of a rank is a pure function of
    ``(len(dataset), batch_size, seed, rank, world_size, shuffle)`` (not of ``num_workers``);
    batches are numbered ``0, 1, 2, ...`` per rank, and ``start_batch=k`` yields batch ``k``
    first. A trainer that has consumed ``k`` batches on this rank (``k`` = optimizer steps x
    micro-batches per step; also ``loader.next_batch``) and checkpointed can restart with
    ``start_batch=k`` and the same other arguments and sees exactly the batches an
    uninterrupted run would have seen. Changing ``batch_size``/``world_size``/the data set
    between runs breaks the contract (epochs are re-cut: still valid data, not the same stream).

    Arguments are checked here (``ValueError`` if the data set has fewer than
    ``batch_size x world_size`` images); workers start on the first ``next()``.
    """
    flips = bool(getattr(dataset, "hflip", False)) and isinstance(dataset, _EncodedImageDataset)
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank, world_size, start_batch, shuffle, flips)
    return InfiniteLoader(dataset, sampler, num_workers, pin_memory, prefetch_factor)


# -- Writing data sets: encoded images into an lmdb --------------------------------------------

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


def lmdb_value_format(fmt: str) -> str:
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


def write_lmdb_records(
    tmp: str, n: int, record, per_image: int, commit_every: int, shown_as: str | None = None
) -> None:
    """``record(i) -> (key, value)`` for ``i < n`` into a new lmdb at ``tmp``, ``commit_every``
    records per transaction. ``per_image``: a generous bound on a value's size (encoded images
    are smaller than raw RGB, PNG's worst case is raw plus a little); the map is sparse on Linux,
    and grows on MapFullError anyway. A full disk is an ``OSError(ENOSPC)`` naming ``shown_as``
    (the folder the user asked for; default ``tmp``), as any other write to a full disk."""
    map_size = max(1 << 24, 2 * n * per_image + (1 << 20))
    env = lmdb.open(os.fsencode(tmp), map_size=map_size, subdir=True, lock=True, readahead=False, meminit=False)
    try:
        step = max(1, int(commit_every))
        for start in range(0, n, step):
            records = [record(i) for i in range(start, min(n, start + step))]
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in records:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    map_size *= 2
                    env.set_mapsize(map_size)
        env.sync(True)
    except lmdb.Error as e:
        # py-lmdb reports an OS error as lmdb.Error("what: <strerror>"), without its errno.
        # A short write to a full disk can come back as EIO (seen on a full tmpfs).
        full = next((c for c in (errno.ENOSPC, errno.EDQUOT, errno.EIO) if os.strerror(c) in str(e)), None)
        if full is None:
            raise
        raise OSError(full, f"{os.strerror(full)} ({e})", shown_as or tmp) from e
    finally:
        env.close()


def write_lmdb_data_set(out: str, n: int, record, per_image: int, commit_every: int, overwrite: bool, kind: str):
    """:func:`write_lmdb_records` as a new data set at ``out``, by the rules of
    :mod:`blurdiff.output_folders`: built in a hidden temporary folder beside ``out`` (``kind``
    names it) and renamed into place when complete; an existing non-empty ``out`` is refused
    (``FileExistsError``): an earlier data set (:class:`OutputExistsError`) unless
    ``overwrite=True``, anything else always."""
    check_replaceable(out, overwrite, lambda name: name in ("data.mdb", "lock.mdb"), "a data set")
    with new_output_folder(out, kind) as tmp:
        write_lmdb_records(tmp, n, record, per_image, commit_every, shown_as=out)


# -- Export lmdb (or image folder) -> numbered PNGs --------------------------------------------

_EXPORT_NAME = re.compile(r"^\d{6,}\.png$")


def export_lmdb_to_folder(src, out, limit: int | None = None, resolution=None, *, overwrite: bool = False) -> int:
    """Decode the records of ``src`` (lmdb, or an image folder) into ``out/000000.png`` ...

    Records are taken in key order (the reader's order). ``resolution`` (int or ``(H, W)``)
    resizes without cropping like the training reader; ``None`` keeps the native size.
    Undecodable records are skipped (not replaced), counted and logged, so the output is the set
    of good images. ``limit`` caps the number written. ``out`` is written and refused as
    :func:`write_lmdb_data_set` says (an earlier export may be replaced). Returns the number of
    PNGs written.
    """
    out = os.fspath(out)
    ds = open_dataset(src, resolution)  # raises FileNotFoundError / ValueError as documented
    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    check_replaceable(out, overwrite, lambda name: bool(_EXPORT_NAME.match(name)), "exported PNGs")
    written = bad = 0
    with new_output_folder(out, "png-export") as tmp:
        for i in range(len(ds)):
            if limit is not None and written >= int(limit):
                break
            img = ds._read_or_skip(i)
            if img is None:
                bad += 1
                continue
            name = f"{written:06d}.png"
            _save_png(img, os.path.join(tmp, name), os.path.join(out, name))
            written += 1
        if written == 0 and len(ds) > 0 and (limit is None or int(limit) > 0):
            raise UndecodableDataError(f"no record of {src} could be decoded ({bad} bad records)")
    if bad:
        log.warning("export %s -> %s: skipped %d undecodable record(s)", src, out, bad)
    log.info("exported %d images from %s to %s", written, src, out)
    return written


def _save_png(img: Image.Image, path: str, shown_as: str) -> None:
    """``img.save(path)``; a write error (a full disk) that names no file names ``shown_as``."""
    try:
        img.save(path, format="PNG")
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), shown_as) from exc

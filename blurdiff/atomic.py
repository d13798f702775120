"""Files written atomically (a temporary file beside the target, renamed over it when complete),
and the hash that identifies a file's content (:func:`file_sha256`).

A crash at any moment leaves the old file or the complete new one, never a torn one. The
temporary is ``.NAME.tmp-PID``: hidden, never a final name, and found by :func:`remove_stale`
when a killed process left it behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write tmp`` puts the file at ``p`` only if the block succeeds.

    ``durable``: fsync the file and the folder too, so the new file survives a power cut (for
    checkpoints and statistics that took long to make).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale(folder: str | os.PathLike, pattern: str = "*") -> None:
    """Delete the temporaries of files ``folder/pattern`` that a killed writer left behind."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".{pattern}.tmp-*"):
            stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes. Remembered per (path, size, modification time) for the
    process: checkpoints and Inception weights are hundreds of MB, and are hashed more than once."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256_CACHE[key] = h.hexdigest()
    return _SHA256_CACHE[key]

"""Files written atomically, and the hash that identifies a file's content (:func:`file_sha256`).

A file is written as a temporary ``.NAME.tmp-PID`` beside it (hidden, found by :func:`remove_stale`
when a killed process left it behind) and renamed over it when complete: a crash leaves the old
file or the complete new one. Only a regular file (or nothing) is replaced (:func:`writable_target`);
the new file keeps the mode of the file it replaces, or gets what ``open`` would give a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

# What a file's mode says it is, for the message refusing to replace it.
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


class NotARegularFileError(FileExistsError):
    """An output path that holds something other than a regular file, which is never replaced."""


def writable_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: ``path`` itself, or where its symlinks lead (the link
    stays). ``NotARegularFileError`` when that exists and is not a regular file (a directory, a
    device, a FIFO, a socket: the message names ``path``, the link's target, and what it is)."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks: what the link leads to decides
    except FileNotFoundError:
        st = None  # nothing there, or a dangling symlink: a new file at its target
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        via = f" (a symlink to {target})" if target != path else ""
        raise NotARegularFileError(f"{path}{via} is {kind}, not a regular file; give the path of a file to write")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write tmp`` puts the file at ``p`` only if the block succeeds.

    ``durable``: fsync the file and the folder too, so the new file survives a power cut (for
    checkpoints and statistics that took long to make). ``NotARegularFileError`` (see
    :func:`writable_target`) before the block runs."""
    path = writable_target(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, _mode_for(path))
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    # Some writers create their temporary private (safetensors: 0600), which would make the
    # result differ from its neighbours (a checkpoint's config.json is 0644).
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports it; elsewhere setting and restoring it is the only way to read it.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


@contextlib.contextmanager
def safetensors_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """safetensors reports a failed write as ``SafetensorError("... I/O error: <strerror> (os error
    N)")``: raised here as the ``OSError(N)`` it is, naming ``path`` (a full disk, a failing one)."""
    try:
        yield
    except Exception as e:
        found = re.search(r"\(os error (\d+)\)", str(e))
        if type(e).__name__ != "SafetensorError" or found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from e

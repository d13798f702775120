"""Run folders: what may become one (:func:`check_run_folder`, :func:`check_writable`) and the lock
a training holds on its folder while it works there (:func:`run_lock`)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from blurdiff.checkpoint import checkpoint_dir, list_checkpoints
from blurdiff.output_folders import some_names
from blurdiff.safe_json import loads as json_loads


def check_run_folder(run_dir) -> None:
    """FileExistsError unless ``run_dir`` is absent, empty, or a blurdiff run (it has checkpoints,
    or its config.json is a run's configuration): a run writes config.json and metrics.jsonl
    over whatever had those names."""
    run_dir = Path(run_dir)
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()) if run_dir.is_dir() else []
    names = [n for n in names if n != RUN_LOCK]
    if not names or list_checkpoints(run_dir) or _is_run_config(run_dir / "config.json"):
        return
    raise FileExistsError(
        f"--out {run_dir} is not empty and is not a blurdiff run (no checkpoints/ckpt-*.pt, "
        f"no config.json of a run); it holds {some_names(names)}. Refusing to write the run's "
        f"config.json and metrics.jsonl there: choose a new or empty folder"
    )


def _is_run_config(path: Path) -> bool:
    try:
        config = json_loads(path.read_text())
    except (OSError, ValueError):  # absent, a folder, unreadable, not JSON
        return False
    # What the trainer writes there: a checkpoint's config (see the top of this file).
    return (
        isinstance(config, dict)
        and isinstance(config.get("preset"), str)
        and all(isinstance(config.get(k), dict) for k in ("process", "unet", "train"))
    )


def check_writable(run_dir) -> None:
    """Create and remove a probe file in the run folder and in its checkpoints/ (or, for those
    not made yet, in the nearest folder above them that exists: where they will be made), so that
    a folder the run cannot write fails at the start, naming it, not at the first save."""
    run_dir = Path(run_dir)
    probed = set()
    for folder in (run_dir, checkpoint_dir(run_dir)):
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder in probed:
            continue
        probed.add(folder)
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
                pass
        except OSError as e:  # OSError(errno, ...) is PermissionError, NotADirectoryError ... again
            raise OSError(e.errno, f"cannot write the run's checkpoints and logs ({e.strerror})", str(folder)) from e


#: The file a training keeps locked while it works in its run folder (:func:`run_lock`).
RUN_LOCK = ".train.lock"


class RunInUseError(RuntimeError):
    """Another process is training in the run folder."""


@contextlib.contextmanager
def run_lock(run_dir) -> Iterator[None]:
    """Hold the run folder's lock for the block, or raise :class:`RunInUseError` naming the
    process that holds it: two trainings in one folder would interleave their checkpoints and logs.

    An ``flock`` on ``RUN/.train.lock``, which the OS drops however the holder ends (no stale lock).
    Unlocked where the lock cannot be had (no fcntl, a file system without flock, a folder that is
    not a run's or cannot be made: the checks that follow say what is wrong with it).
    """
    fd = _acquire(Path(run_dir))
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _acquire(run_dir: Path) -> int | None:
    try:
        import fcntl
    except ImportError:
        return None
    if run_dir.exists() and not run_dir.is_dir():
        return None
    try:
        check_run_folder(run_dir)  # someone else's folder gets no lock file
    except FileExistsError:
        return None
    path = run_dir / RUN_LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunInUseError(
            f"{run_dir} is being trained by {holder} (it holds {path}); wait for that training to end, "
            f"or choose another --out"
        ) from None
    except OSError:  # no flock here (some network file systems)
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd

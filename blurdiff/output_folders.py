"""Output folders that blurdiff replaces only when it wrote them (:func:`check_replaceable`): the
data commands' lmdbs and PNG folders, and exports, each built whole beside its place and renamed
into it (:func:`new_output_folder`)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator

__all__ = ["MARKER", "OutputExistsError", "check_replaceable", "new_output_folder", "some_names"]


#: The file written into every output folder of this module: what makes a folder blurdiff's.
MARKER = ".blurdiff-output"


class OutputExistsError(FileExistsError):
    """``path`` holds an earlier output of blurdiff, which ``option=True`` would replace; :meth:`hint`
    words the fix for another caller (the CLI: ``--overwrite``)."""

    def __init__(self, path, what: str, option: str = "overwrite"):
        self.path, self.what, self.option = os.fspath(path), what, option
        super().__init__(self.hint(f"{option}=True"))

    def hint(self, how: str) -> str:
        return f"{self.path} already holds {self.what}; pass {how} to replace it"


def some_names(names: Iterable[str], n: int = 3) -> str:
    """The first ``n`` of ``names`` for an error message, and how many there are in all."""
    names = list(names)
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def check_replaceable(
    out: str,
    overwrite: bool,
    writes: Callable[[str], bool],
    what: str,
    *,
    ours: Callable[[str], bool] | None = None,
    not_ours: str = f"was not written by blurdiff (it has no {MARKER} file)",
) -> None:
    """Raise ``FileExistsError`` unless ``out`` is absent, an empty folder, or (``overwrite``)
    a folder of blurdiff's holding only names for which ``writes`` (what blurdiff writes there) is true.

    A folder is blurdiff's when ``ours(out)`` says so (default: it holds :data:`MARKER`);
    ``not_ours`` words why a folder is not, after "is not empty and".
    """
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a folder; refusing to replace it")
    names = sorted(os.listdir(out))
    if not names:
        return
    if not (ours(out) if ours is not None else MARKER in names):
        raise FileExistsError(
            f"{out} is not empty and {not_ours}; it holds {some_names(names)}. Refusing to replace it: "
            f"choose a new or empty folder"
        )
    foreign = [n for n in names if n != MARKER and not writes(n)]
    if foreign:
        raise FileExistsError(
            f"{out} holds files blurdiff did not write ({some_names(foreign)}); refusing to replace it: "
            f"move them away or choose another folder"
        )
    if not overwrite:
        raise OutputExistsError(out, what)


@contextlib.contextmanager
def new_output_folder(out: str, kind: str) -> Iterator[str]:
    """``with new_output_folder(out, kind) as tmp:`` fill ``tmp``; it becomes ``out`` if the block succeeds.

    ``tmp`` is a new hidden sibling (no folder of the user's is reused or deleted), marked from the
    start. An existing ``out`` (:func:`check_replaceable` first) is moved aside first and deleted
    last: a failure at any point leaves the old ``out`` or the complete new one.
    """
    out = os.path.abspath(out)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = _fresh_folder(parent, f".{name}.tmp-")
    try:
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"written_by": "blurdiff", "kind": kind}, f)
        yield tmp
        _move_into_place(tmp, out)
    finally:
        if os.path.isdir(tmp):  # the block failed: the temporary is ours, the old out untouched
            shutil.rmtree(tmp)


def _fresh_folder(parent: str, prefix: str) -> str:
    """Create a folder ``parent/prefix<unique>`` that did not exist; its mode comes from the
    umask (``mkdtemp`` would make it private, and it becomes the user's data set)."""
    while True:
        path = os.path.join(parent, f"{prefix}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _move_into_place(tmp: str, out: str) -> None:
    # rename() cannot replace a non-empty folder, so the old one goes aside first (and comes
    # back if the new one cannot take its place).
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    parent, name = os.path.split(out)
    aside = _fresh_folder(parent, f".{name}.old-")
    old = os.path.join(aside, name)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        os.rmdir(aside)
        raise
    shutil.rmtree(aside)

"""Atomic writes replace only a regular file (or nothing): a symlink is written through, and a
directory, FIFO or device at the path is refused, by name, and left as it was."""

from __future__ import annotations

import os
import re
import stat

import pytest

from blurdiff.atomic import NotARegularFileError, atomic_path, write_text_atomic


def test_regular_file_and_nothing_are_replaced(tmp_path):
    new, old = tmp_path / "new.txt", tmp_path / "old.txt"
    old.write_text("old")
    write_text_atomic(new, "a")
    write_text_atomic(old, "b")
    assert new.read_text() == "a" and old.read_text() == "b"
    assert sorted(os.listdir(tmp_path)) == ["new.txt", "old.txt"]  # no temporary left


def test_symlink_is_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.json"
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(os.path.join("real", "report.json"))  # relative, as users make them
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "report.json")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path / "real") == ["report.json"]


def test_dangling_symlink_gets_its_target_created(tmp_path):
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "elsewhere.png")
    write_text_atomic(link, "made")
    assert link.is_symlink() and (tmp_path / "elsewhere.png").read_text() == "made"


def test_fifo_is_refused_and_left_alone(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    ran = []
    refused = "^" + re.escape(f"{fifo} is a FIFO (named pipe), not a regular file")
    with pytest.raises(NotARegularFileError, match=refused):
        with atomic_path(fifo):
            ran.append(True)
    assert not ran  # refused before the caller's work
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_symlink_to_a_fifo_names_both(tmp_path):
    fifo, link = tmp_path / "pipe", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    with pytest.raises(NotARegularFileError, match="^" + re.escape(f"{link} (a symlink to {fifo}) is a FIFO")):
        write_text_atomic(link, "x")
    assert link.is_symlink() and stat.S_ISFIFO(os.stat(link).st_mode)


def test_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("mine")
    with pytest.raises(NotARegularFileError, match="is a directory, not a regular file"):
        write_text_atomic(tmp_path / "d", "x")
    assert (tmp_path / "d" / "keep").read_text() == "mine"


def test_character_device_is_refused(tmp_path):
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device node needs root")
    refused = "^" + re.escape(f"{node} is a character device, not a regular file")
    with pytest.raises(NotARegularFileError, match=refused):
        write_text_atomic(node, "{}")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_mode_is_the_replaced_files_or_the_umasks(tmp_path):
    before = os.umask(0o027)
    try:
        for name in ("new", "old"):
            if name == "old":
                (tmp_path / name).write_text("old")
                os.chmod(tmp_path / name, 0o604)
            with atomic_path(tmp_path / name) as tmp:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # a writer that makes its file private
                os.close(fd)
    finally:
        os.umask(before)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "old").st_mode) == 0o604

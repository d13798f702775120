"""A broken lmdb data file (truncated, empty, random bytes, a corrupted page) is refused by name
with one line, before lmdb maps it: a truncated file would otherwise be a Bus error."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from blurdiff.data import open_dataset
from blurdiff.lmdb_file import read_lmdb_meta
from blurdiff.toy_data import make_toy_lmdb

# Opens the data set in a child, since a truncated file used to kill its reader with SIGBUS.
_OPEN_IN_CHILD = """
import sys
from blurdiff.data import open_dataset
try:
    open_dataset(sys.argv[1], 16)
except ValueError as e:
    print(e)
"""


@pytest.fixture
def toy(tmp_path):
    """A toy lmdb of many pages (200 records of 16x16)."""
    return make_toy_lmdb(tmp_path / "toy", n=200, size=16)


def data_file(path) -> str:
    return os.path.join(path, "data.mdb")


def lmdb_own_account(path) -> tuple[int, int, int]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        info = env.info()
        return env.stat()["psize"], info["last_pgno"], info["last_txnid"]
    finally:
        env.close()


def test_meta_is_read_as_lmdb_reads_it(toy):
    meta = read_lmdb_meta(data_file(toy))
    assert (meta.page_size, meta.last_page, meta.txnid) == lmdb_own_account(toy)
    assert meta.last_page > 2 and meta.file_size == meta.required_bytes == os.path.getsize(data_file(toy))
    # A second write transaction goes to the other meta page: the newer one must be picked.
    env = lmdb.open(str(toy), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(50):
            txn.put(b"%040d" % i, bytes(3000))
    env.close()
    again = read_lmdb_meta(data_file(toy))
    assert (again.page_size, again.last_page, again.txnid) == lmdb_own_account(toy)
    assert again.txnid == meta.txnid + 1 and again.last_page > meta.last_page


@pytest.mark.parametrize("cut", ["4 KiB", "half"])
def test_truncated_lmdb_is_refused_before_it_is_mapped(toy, cut):
    f = data_file(toy)
    size = os.path.getsize(f)
    keep = size - 4096 if cut == "4 KiB" else size // 2
    os.truncate(f, keep)
    child = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, str(toy)], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, f"the reader died (exit code {child.returncode}): {child.stderr[-2000:]}"
    message = child.stdout.strip()
    assert message.splitlines() == [message]
    assert f in message and "truncated" in message and f"{size - keep} bytes missing" in message


def _corrupt_root_page(path) -> None:
    f = data_file(path)
    meta = read_lmdb_meta(f)
    newest = meta.page_size if meta.txnid % 2 else 0  # transaction n writes meta page n % 2
    with open(f, "r+b") as fh:
        fh.seek(newest + 16 + 24 + 48 + 40)  # MDB_meta.mm_dbs[MAIN_DBI].md_root
        (root,) = struct.unpack("=Q", fh.read(8))
        fh.seek(root * meta.page_size)
        fh.write(b"\xff" * 64)


@pytest.mark.parametrize("content", ["empty", "random", "short", "corrupted page"])
def test_broken_lmdb_is_one_line_naming_the_file(toy, content):
    f = data_file(toy)
    if content == "corrupted page":
        _corrupt_root_page(toy)
    else:
        size = {"empty": 0, "random": os.path.getsize(f), "short": 100}[content]
        with open(f, "wb") as fh:
            fh.write(np.random.default_rng(0).bytes(size))
    with pytest.raises(ValueError) as info:
        open_dataset(toy, 16)
    message = str(info.value)
    assert message.splitlines() == [message] and f in message


def test_a_page_corrupted_after_opening_stops_the_reader(toy):
    ds = open_dataset(toy, 16)
    _corrupt_root_page(toy)
    with pytest.raises(ValueError, match=re.escape(data_file(toy)) + ".*MDB_CORRUPTED"):
        ds[0]  # not skipped as one bad record: every record is behind that page
    assert ds.bad_records == 0

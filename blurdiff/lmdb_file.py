"""An lmdb data file checked against its own meta pages before it is mapped.

lmdb maps ``data.mdb`` into memory: a page past the end of a truncated file (an interrupted copy
or unzip) is a Bus error that kills the process, not an exception. The two meta pages at the start
of the file say how many pages it must hold, so a file shorter than that is refused here, by name,
with the bytes it is missing.

Layout (lmdb's ``mdb.c``, 64-bit build, native byte order; lmdb reads no other): every page starts
with a 16-byte header (``pgno`` u64, pad u16, ``flags`` u16, u32); a meta page (``P_META``) then
holds ``MDB_meta``: magic u32, version u32, address u64, mapsize u64, two ``MDB_db`` records of 48
bytes (the free-page DB's first u32, ``md_pad``, is the page size), ``mm_last_pg`` u64 (the last
used page number) and ``mm_txnid`` u64. Meta page 0 is at offset 0, meta page 1 at offset
page size; lmdb uses the one with the larger txnid.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

__all__ = ["BrokenLMDBError", "LMDBMeta", "check_lmdb_file", "read_lmdb_meta"]

MDB_MAGIC = 0xBEEFC0DE
MDB_DATA_VERSION = 1
P_META = 0x08
_PAGE_HEADER = struct.Struct("=QHHI")
_META = struct.Struct("=IIQQ")  # magic, version, address, mapsize
_PSIZE = struct.Struct("=I")  # the free-page DB's md_pad
_PSIZE_AT = _PAGE_HEADER.size + _META.size
_LAST = struct.Struct("=QQ")  # mm_last_pg, mm_txnid
_LAST_AT = _PSIZE_AT + 2 * 48
_META_PAGE_BYTES = _LAST_AT + _LAST.size
# The page sizes accepted: powers of two from 256 bytes to 64 KiB (lmdb takes the OS page size).
_MIN_PAGE, _MAX_PAGE = 256, 1 << 16


class BrokenLMDBError(ValueError):
    """An lmdb data file that is truncated, not an lmdb, or that lmdb reports as corrupted."""


class LMDBMeta(NamedTuple):
    """The meta page lmdb uses, and the size of the file it was read from."""

    page_size: int
    last_page: int
    txnid: int
    file_size: int

    @property
    def required_bytes(self) -> int:
        return (self.last_page + 1) * self.page_size


def _meta_page(f, offset: int, size: int, where: str) -> tuple[int, int, int, int]:
    """``(version, page_size, last_page, txnid)`` of the meta page at ``offset``."""
    if offset == 0 and size < _META_PAGE_BYTES:
        raise BrokenLMDBError(f"{where} is not an lmdb data file ({size} bytes, shorter than an lmdb meta page)")
    if size < offset + _META_PAGE_BYTES:  # the second meta page fills bytes offset .. 2 * offset
        raise BrokenLMDBError(
            f"the lmdb data file {where} is truncated: {size} bytes end before its second meta page "
            f"(at least {2 * offset - size} bytes missing); copy the data set again"
        )
    f.seek(offset)
    raw = f.read(_META_PAGE_BYTES)
    _, _, flags, _ = _PAGE_HEADER.unpack_from(raw, 0)
    magic, version, _, _ = _META.unpack_from(raw, _PAGE_HEADER.size)
    if magic != MDB_MAGIC or not flags & P_META:
        raise BrokenLMDBError(f"{where} is not an lmdb data file (no lmdb meta page at byte {offset})")
    (page_size,) = _PSIZE.unpack_from(raw, _PSIZE_AT)
    last_page, txnid = _LAST.unpack_from(raw, _LAST_AT)
    return version, page_size, last_page, txnid


def read_lmdb_meta(data_file) -> LMDBMeta:
    """The meta page lmdb would use of ``data_file`` (a ``data.mdb``); ``BrokenLMDBError`` when
    the file is empty, not an lmdb, of another format version or cut short of its meta pages."""
    where = os.fsdecode(data_file)
    with open(data_file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise BrokenLMDBError(f"the lmdb data file {where} is empty (0 bytes); copy the data set again")
        version, page_size, last0, txn0 = _meta_page(f, 0, size, where)
        if version != MDB_DATA_VERSION:
            raise BrokenLMDBError(
                f"{where} is an lmdb of data format version {version}; this lmdb reads version {MDB_DATA_VERSION}"
            )
        if not _MIN_PAGE <= page_size <= _MAX_PAGE or page_size & (page_size - 1):
            raise BrokenLMDBError(f"{where} is not a valid lmdb data file (page size {page_size} in its meta page)")
        _, _, last1, txn1 = _meta_page(f, page_size, size, where)
    last, txnid = (last1, txn1) if txn1 > txn0 else (last0, txn0)
    return LMDBMeta(page_size, last, txnid, size)


def check_lmdb_file(data_file) -> LMDBMeta:
    """:func:`read_lmdb_meta`, and ``BrokenLMDBError`` unless the file holds every page up to the
    last one its meta page names (mapping a shorter file is a Bus error at the first page past its
    end)."""
    meta = read_lmdb_meta(data_file)
    if meta.file_size < meta.required_bytes:
        raise BrokenLMDBError(
            f"the lmdb data file {os.fsdecode(data_file)} is truncated: its meta page says "
            f"{meta.last_page + 1} pages of {meta.page_size} bytes ({meta.required_bytes} bytes), the file has "
            f"{meta.file_size} ({meta.required_bytes - meta.file_size} bytes missing); copy the data set again"
        )
    return meta

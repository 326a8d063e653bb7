"""The sparse-file store: vectored writes, holes, the lock against a second daemon."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storaged.backstore.base import BackstoreError
from storaged.backstore.sparsefile import BackstoreInUse, SparseFileBackstore


async def test_writev_lands_buffers_back_to_back(tmp_path: Path) -> None:
    store = SparseFileBackstore(str(tmp_path / "lun.img"), 4 << 20)
    small = [b"head", bytearray(b"-middle-"), memoryview(b"tail")]
    await store.writev(4096, small)
    assert await store.read(4096, 16) == b"head-middle-tail"
    big = [os.urandom(100), os.urandom(1 << 20), b"", os.urandom(7)]  # large enough for the thread path
    await store.writev(8192, big, fua=True)
    assert await store.read(8192, (1 << 20) + 107) == b"".join(big)
    store.close()


async def test_holes_read_as_zeros_and_extents_report_them(tmp_path: Path) -> None:
    store = SparseFileBackstore(str(tmp_path / "lun.img"), 8 << 20)
    await store.write(1 << 20, os.urandom(1 << 20))
    await store.unmap(1 << 20, 512 * 1024)
    assert await store.read(1 << 20, 512 * 1024) == bytes(512 * 1024)
    mapped = [(e.offset, e.length) for e in await store.extents(0, 8 << 20) if e.mapped]
    assert mapped and all(off >= (1 << 20) + 512 * 1024 for off, _ in mapped)
    store.close()


def test_a_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "lun.img")
    first = SparseFileBackstore(path, 1 << 20)
    with pytest.raises(BackstoreInUse):
        SparseFileBackstore(path, 1 << 20)
    first.close()
    SparseFileBackstore(path, 1 << 20).close()  # free again once closed


def test_a_file_larger_than_its_lun_is_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "lun.img"
    path.write_bytes(b"x" * 8192)
    with pytest.raises(BackstoreError, match="refusing to hide data"):
        SparseFileBackstore(str(path), 4096)
    assert path.stat().st_size == 8192

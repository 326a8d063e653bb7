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


# The config check resolves symbolic links before the daemon opens anything, but a link can be swapped
# in between that check and the open. With ``confine_to`` the store checks what it actually opened.


def test_a_link_swapped_in_after_the_check_to_a_file_outside_is_refused_and_not_grown(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    victim = outside / "precious.bin"
    victim.write_bytes(b"keep me")
    (data / "lun.img").symlink_to(victim)
    with pytest.raises(BackstoreError, match="outside the data directory"):
        SparseFileBackstore(str(data / "lun.img"), 1 << 20, confine_to=str(data))
    assert victim.read_bytes() == b"keep me"


def test_a_parent_directory_swapped_for_a_link_outside_creates_nothing_there(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BackstoreError, match="outside the data directory"):
        SparseFileBackstore(str(data / "sub" / "lun.img"), 1 << 20, confine_to=str(data))
    assert list(outside.iterdir()) == []


def test_links_that_stay_inside_and_unconfined_stores_still_open(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "real.img").write_bytes(b"")
    (data / "alias.img").symlink_to(data / "real.img")
    SparseFileBackstore(str(data / "alias.img"), 1 << 20, confine_to=str(data)).close()
    assert (data / "real.img").stat().st_size == 1 << 20
    (data / "out.img").symlink_to(outside / "allowed.img")
    (outside / "allowed.img").write_bytes(b"")
    SparseFileBackstore(str(data / "out.img"), 1 << 20).close()  # allow_outside_data_dir: no confinement
    assert (outside / "allowed.img").stat().st_size == 1 << 20

"""Transports: CDBs (pyscsi vs struct), BlockDevice on files, IscsiDevice against an in-process portal."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hostctl import cdb
from hostctl.client import CommandDeviceClient
from hostctl.device import BlockDevice, IscsiDevice, open_device
from hostctl.errors import EXIT_UNREACHABLE, UnreachableError, UsageError
from storaged.cmddev.block import SlotState

from .conftest import HOST, TARGET_A, Site


def test_cdbs_match_the_struct_encoding() -> None:
    assert cdb.read16(0x123456789, 8, 512) == cdb.read16_struct(0x123456789, 8, 512)
    assert cdb.write16(7, 1, 4096, fua=True) == cdb.write16_struct(7, 1, 4096, fua=True)
    assert cdb.write16(7, 1, 4096, fua=True)[1] & 0x08  # FUA
    assert cdb.write16(7, 1, 4096, fua=False) == cdb.write16_struct(7, 1, 4096, fua=False)
    assert cdb.read_capacity16() == cdb.read_capacity16_struct()
    assert cdb.read16(1, 2, 512)[0] == 0x88 and cdb.write16(1, 2, 512)[0] == 0x8A
    data = (1023).to_bytes(8, "big") + (4096).to_bytes(4, "big") + bytes(20)
    cap = cdb.parse_read_capacity16(data)
    assert cap.blocks == 1024 and cap.block_size == 4096 and cap.size == 4 << 20


async def test_block_device_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(64 * 1024))
    dev = BlockDevice(str(path))
    try:
        assert dev.block_size == 512 and not dev.is_block
        await dev.write(1024, b"A" * 512 + b"B" * 512)
        assert await dev.read(1024, 1024) == b"A" * 512 + b"B" * 512
        assert await dev.read(1500, 100) == b"A" * 36 + b"B" * 64  # unaligned reads are fine
        assert path.read_bytes()[1024:2048] == b"A" * 512 + b"B" * 512  # on the file (O_SYNC)
        assert await dev.read(64 * 1024 - 512, 1024) == bytes(1024)  # past the end: zeros
        with pytest.raises(ValueError, match="whole 512-byte blocks"):
            await dev.write(100, b"x" * 512)
    finally:
        await dev.close()


async def test_block_device_falls_back_without_o_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tmpfs and some filesystems refuse O_DIRECT with EINVAL: open again with O_SYNC only."""
    real_open = os.open
    calls: list[int] = []

    def fake_open(path: str, flags: int, *a: object) -> int:
        calls.append(flags)
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", fake_open)
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(8192))
    dev = BlockDevice(str(path))
    try:
        assert not dev.direct and len(calls) == 2 and calls[1] & os.O_SYNC
        await dev.write(512, b"z" * 512)
        assert await dev.read(512, 512) == b"z" * 512
    finally:
        await dev.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
async def test_block_device_on_tmpfs() -> None:
    path = f"/dev/shm/hostctl-test-{os.getpid()}.img"
    with open(path, "wb") as f:
        f.write(bytes(4096))
    try:
        dev = BlockDevice(path)
        await dev.write(0, b"q" * 512)
        assert await dev.read(0, 512) == b"q" * 512
        await dev.close()
    finally:
        os.unlink(path)


async def test_block_device_errors(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="no such device") as e:
        BlockDevice(str(tmp_path / "missing"))
    assert e.value.exit_code == EXIT_UNREACHABLE
    with pytest.raises(UsageError, match="is a directory"):
        BlockDevice(str(tmp_path))
    with pytest.raises(UsageError, match="expected iscsi://"):
        await open_device("nbd://host/1")


async def test_iscsi_device_reads_and_writes(iscsi_site: Site) -> None:
    dev = await IscsiDevice.open(iscsi_site.url(0), initiator=HOST)
    try:
        assert dev.block_size == 512 and dev.blocks == 2048
        await dev.write(4096, b"\x5a" * 1024)
        assert await dev.read(4096, 1024) == b"\x5a" * 1024
        assert await iscsi_site.stores[0].read(4096, 1024) == b"\x5a" * 1024
        assert dev.name == iscsi_site.url(0)
    finally:
        await dev.close()


async def test_iscsi_command_device_end_to_end_with_origin(iscsi_site: Site) -> None:
    dev = await open_device(iscsi_site.url(1), initiator=HOST)
    try:
        c = CommandDeviceClient(dev, array="site-a", initiator=HOST)
        r = await c.run(1, {"over": "iscsi"})
        assert r.ok and r.data == {"echo": {"over": "iscsi"}, "origin": HOST}  # the store saw our initiator
        assert (await c.directory()).states.count(SlotState.FREE) == iscsi_site.stores[1].slots
    finally:
        await dev.close()


async def test_iscsi_unreachable_messages(iscsi_site: Site) -> None:
    with pytest.raises(UnreachableError, match=r"cannot reach iscsi://127\.0\.0\.1:1/.*: connection refused"):
        await IscsiDevice.open(f"iscsi://127.0.0.1:1/{TARGET_A}/1", initiator=HOST)
    with pytest.raises(UnreachableError, match="no such target"):
        await IscsiDevice.open(iscsi_site.url(1, target="iqn.2026-11.io.storaged:nope"), initiator=HOST)
    with pytest.raises(UnreachableError, match="no such LUN"):
        await IscsiDevice.open(iscsi_site.url(9), initiator=HOST)


async def test_iscsi_secret_is_not_in_messages(iscsi_site: Site) -> None:
    url = f"iscsi://user:s3cret@127.0.0.1:1/{TARGET_A}/1"
    with pytest.raises(UnreachableError) as e:
        await IscsiDevice.open(url, initiator=HOST)
    assert "s3cret" not in str(e.value)

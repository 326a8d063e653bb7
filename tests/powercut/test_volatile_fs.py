"""The volatile file system loses exactly what no fsync covered, and a power cut of a plain LUN
served from it takes unflushed writes and keeps flushed and FUA ones (so the pair tests' cuts
really cut: kill -9 alone keeps everything)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiSession
from tests.integration.conftest import TARGET, require, small_config
from tests.integration.daemon import StoragedProcess
from tests.integration.test_replication import read16

from .mount import VolatileMount, require_fuse
from .qemu_writers import Ledger, QemuIoWriter, durable_losses

BLOCK = 4096


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[VolatileMount]:
    require_fuse()
    m = VolatileMount(tmp_path / "volatile", tmp_path / "disk")
    try:
        yield m.start()
    finally:
        m.kill()


def test_a_cut_keeps_what_fsync_covered_and_drops_the_rest(mount: VolatileMount) -> None:
    path = mount.mount / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 4 * BLOCK)  # metadata: durable at once
        os.pwrite(fd, b"A" * BLOCK, 0)
        os.fdatasync(fd)
        os.pwrite(fd, b"B" * 512, 512)  # unsynced, inside a synced block
        os.pwrite(fd, b"C" * 100, 4 * BLOCK)  # unsynced, grows the file
        assert os.pread(fd, 1024, 0) == b"A" * 512 + b"B" * 512
        assert os.fstat(fd).st_size == 4 * BLOCK + 100
        assert mount.dirty() == (1, 2)
    finally:
        os.close(fd)  # close(2) syncs nothing
    tmp = mount.mount / "t.tmp"
    tmp.write_bytes(b"renamed")  # a rename carries the unsynced data with the file
    tmp.rename(mount.mount / "t")
    assert (mount.mount / "t").read_bytes() == b"renamed"
    stats = mount.cut()
    assert (stats.files, stats.blocks, stats.kept) == (2, 3, 0)
    disk = (mount.backing / "f").read_bytes()
    assert disk == b"A" * BLOCK + bytes(3 * BLOCK)
    assert (mount.backing / "t").read_bytes() == b""  # the name is there, its data was never synced
    mount.start()
    assert (mount.mount / "f").read_bytes() == disk
    fd = os.open(mount.mount / "f", os.O_RDWR)
    try:
        os.pwrite(fd, b"D" * 10, 0)
    finally:
        os.close(fd)
    mount.stop()  # a clean unmount writes everything back
    assert (mount.backing / "f").read_bytes()[:11] == b"D" * 10 + b"A"


def test_a_reordering_cut_keeps_a_seeded_share_of_whole_blocks(mount: VolatileMount) -> None:
    fd = os.open(mount.mount / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for blk in range(64):
            os.pwrite(fd, bytes([blk + 1]) * BLOCK, blk * BLOCK)
    finally:
        os.close(fd)
    stats = mount.cut(keep=0.5, seed=7)
    disk = (mount.backing / "f").read_bytes().ljust(64 * BLOCK, b"\0")
    kept = [blk for blk in range(64) if disk[blk * BLOCK : (blk + 1) * BLOCK] == bytes([blk + 1]) * BLOCK]
    dropped = [blk for blk in range(64) if disk[blk * BLOCK : (blk + 1) * BLOCK] == bytes(BLOCK)]
    assert len(kept) + len(dropped) == 64, "a block was torn"
    assert 0 < len(kept) < 64 and stats.kept == len(kept) and stats.blocks == 64
    rng = random.Random(7)  # the same draw as the file system's
    assert kept == [blk for blk in range(64) if rng.random() < 0.5]


def test_a_power_cut_of_a_plain_lun_takes_unflushed_writes_only(tmp_path: Path, mount: VolatileMount) -> None:
    """kill -9 alone: an unflushed write survives (the cache outlives the process). kill -9 and a
    cut: an unflushed write is gone, a flushed one and a FUA one survive."""
    require("qemu-io")
    lun, size = 1, 16 << 20  # small_config's LUN 1
    array = StoragedProcess(mount.mount, small_config())
    ledger = Ledger()

    async def writer() -> QemuIoWriter:
        w = QemuIoWriter(ledger, ("127.0.0.1", array.port), TARGET, lun, size // 512, tmp_path, "plain",
                         random.Random(1))
        await w.start()
        return w

    async def volume() -> bytes:
        s = IscsiSession()
        await s.login("127.0.0.1", array.port, TARGET, initiator="iqn.2026-11.test:checker")
        chunks = []
        try:
            for off in range(0, size, 4 << 20):  # within the target's maximum transfer length
                r = await s.scsi(lun, read16(off // 512, (4 << 20) // 512), read_length=4 << 20)
                assert r.status == 0, r
                chunks.append(r.data)
        finally:
            await s.logout()
        return b"".join(chunks)

    async def scenario() -> None:
        array.start()
        w = await writer()
        unflushed_killed = await w.write_at(0, 8)
        await w.kill()
        array.kill()
        array.start()
        assert not durable_losses(ledger, {lun: await volume()}, {unflushed_killed.index}), \
            "kill -9 alone lost a write: the page cache should have kept it"
        w = await writer()
        flushed = await w.write_at(100, 8)
        await w.flush()
        fua = await w.write_at(200, 8, fua=True)
        unflushed = await w.write_at(300, 8)
        await w.kill()
        array.kill()
        stats = await asyncio.to_thread(mount.cut)
        exposed = ledger.power_cut()
        assert exposed == {unflushed.index} and stats.dropped > 0, (exposed, stats)
        await asyncio.to_thread(mount.start)
        array.start()
        after = {lun: await volume()}
        assert ledger.durable >= {unflushed_killed.index, flushed.index, fua.index}
        assert not durable_losses(ledger, after), "a flushed or FUA write was lost"
        lost = durable_losses(ledger, after, exposed)
        assert lost and "shows nothing" in lost[0], f"the unflushed write survived the cut: {lost}"
        assert array.stop() == 0

    try:
        asyncio.run(scenario())
    finally:
        array.kill()

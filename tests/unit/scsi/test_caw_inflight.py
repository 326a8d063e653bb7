"""COMPARE AND WRITE and WRITE ATOMIC against writes already in flight on the same blocks (issue 8).

A large write runs in a thread (sparse file) or awaits a peer (virtual volume), so while it is in
flight its range can be half old, half new. A CAW must compare against the state before or after
the whole write, never the torn mix (VMware ATS locking depends on it). The store below makes the
torn moment explicit: the next armed write lands its first half, then waits for the test.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from storaged.backstore.memory import MemoryBackstore
from storaged.scsi.lu import LogicalUnit
from storaged.scsi.target import ScsiTarget

from .conftest import BS, I1, MISCOMPARE, NAA, Initiator, assert_good, assert_sense, cdb16

pytestmark = pytest.mark.asyncio

N = 8  # blocks of the contended range


def caw(lba: int, n: int) -> bytes:
    return struct.pack(">BBQxxxBBB", 0x89, 0, lba, n, 0, 0)


def write_atomic(lba: int, n: int) -> bytes:
    return struct.pack(">BBQHHBB", 0x9C, 0, lba, 0, n, 0, 0)


class TearingStore(MemoryBackstore):
    """After :meth:`arm`, the next write lands its first half, sets :attr:`torn` and waits for
    :attr:`resume` before landing the rest. Every landed piece is logged as (offset, first byte)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.armed = False
        self.torn = asyncio.Event()
        self.resume = asyncio.Event()
        self.log: list[tuple[int, bytes]] = []

    def arm(self) -> None:
        self.armed = True

    async def write(self, offset, data, fua=False):  # type: ignore[no-untyped-def]
        mv = memoryview(data).cast("B")
        if self.armed:
            self.armed = False
            half = (len(mv) // BS // 2) * BS
            await self._land(offset, mv[:half], False)
            self.torn.set()
            await self.resume.wait()
            await self._land(offset + half, mv[half:], fua)
        else:
            await self._land(offset, mv, fua)

    async def _land(self, offset: int, mv: memoryview, fua: bool) -> None:
        self.log.append((offset, bytes(mv[:1])))
        await MemoryBackstore.write(self, offset, mv, fua)


async def setup() -> tuple[TearingStore, LogicalUnit, Initiator]:
    store = TearingStore(1024 * BS)
    lu = LogicalUnit(store, naa=NAA, serial="SN0001", block_size=BS)
    ini = Initiator(ScsiTarget("t", {0: lu}), I1)
    await ini.clear_ua()
    assert_good(await ini.cmd(cdb16(0x8A, 0, N), b"A" * N * BS))
    return store, lu, ini


async def settle() -> None:
    """Let every runnable task run as far as it can (the memory store never really waits)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def torn_write(store: TearingStore, ini: Initiator, data: bytes) -> asyncio.Future:
    store.arm()
    task = asyncio.ensure_future(ini.cmd(cdb16(0x8A, 0, N), data))
    await store.torn.wait()
    return task


async def test_caw_never_matches_the_torn_state_of_a_write_in_flight() -> None:
    store, _lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    torn = b"B" * (N // 2) * BS + b"A" * (N // 2) * BS
    assert await store.read(0, N * BS) == torn  # the write really is half-landed
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), torn + b"C" * N * BS))
    await settle()
    store.resume.set()
    assert_good(await write)
    assert_sense(await cmp, MISCOMPARE, 0x1D, 0x00)
    assert await store.read(0, N * BS) == b"B" * N * BS


async def test_caw_expecting_the_new_data_waits_for_the_write_and_succeeds() -> None:
    store, _lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), b"B" * N * BS + b"C" * N * BS))
    await settle()
    assert not cmp.done()  # it waits for the write in flight
    store.resume.set()
    assert_good(await write)
    assert_good(await cmp)
    assert await store.read(0, N * BS) == b"C" * N * BS


async def test_caw_on_another_range_does_not_wait() -> None:
    store, _lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    assert_good(await ini.cmd(caw(N, 1), bytes(BS) + b"C" * BS))  # completes while the write is torn
    assert not write.done()
    store.resume.set()
    assert_good(await write)


async def test_write_atomic_waits_for_an_overlapping_write_in_flight() -> None:
    """Serially, WRITE ATOMIC of D over blocks 2-5 after (or before) a WRITE of B over 0-7 leaves
    D on all of 2-5 (or B on all of 0-7); never D on 2-3 and B on 4-5."""
    store, _lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    atomic = asyncio.ensure_future(ini.cmd(write_atomic(2, 4), b"D" * 4 * BS))
    await settle()
    store.resume.set()
    assert_good(await write)
    assert_good(await atomic)
    assert await store.read(0, N * BS) == b"B" * 2 * BS + b"D" * 4 * BS + b"B" * 2 * BS


async def test_writes_arriving_during_a_caw_land_after_it() -> None:
    """A CAW waiting for a write in flight holds off a write issued after it: the order of
    effects is the arrival order (torn write, CAW, later write)."""
    store, _lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), b"B" * N * BS + b"C" * N * BS))
    await settle()
    later = asyncio.ensure_future(ini.cmd(cdb16(0x8A, 1, 1), b"E" * BS))
    await settle()
    assert not later.done()
    store.resume.set()
    for task in (write, cmp, later):
        assert_good(await task)
    assert [b for _, b in store.log[-4:]] == [b"B", b"B", b"C", b"E"]
    assert await store.read(0, 2 * BS) == b"C" * BS + b"E" * BS


async def test_write_same_in_flight_is_seen_whole_by_a_caw() -> None:
    store, _lu, ini = await setup()
    store.arm()
    ws = asyncio.ensure_future(ini.cmd(struct.pack(">BBQIBB", 0x93, 0, 0, N, 0, 0), b"S" * BS))
    await store.torn.wait()
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), b"S" * (N // 2) * BS + b"A" * (N // 2) * BS + bytes(N * BS)))
    await settle()
    store.resume.set()
    assert_good(await ws)
    assert_sense(await cmp, MISCOMPARE, 0x1D, 0x00)


async def test_an_aborted_caw_does_not_keep_the_range() -> None:
    """A CAW cancelled while it waits (connection gone, shutdown) leaves nothing held behind."""
    store, _lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), b"B" * N * BS + b"C" * N * BS))
    await settle()
    cmp.cancel()
    await settle()
    store.resume.set()
    assert_good(await write)
    assert_good(await ini.cmd(cdb16(0x8A, 0, 1), b"F" * BS))  # would hang if the range stayed held
    assert_good(await ini.cmd(caw(0, 1), b"F" * BS + b"G" * BS))


async def test_a_write_that_waited_for_a_caw_is_refused_if_the_lu_became_write_protected() -> None:
    """A write passes its write-protect check, then waits for an overlapping COMPARE AND WRITE;
    meanwhile the LU becomes an S-VOL (or a fenced P-VOL demoted to one), and the array waited only
    for the writes holding their range before. The write must not land when the CAW is done."""
    import asyncio

    from storaged.scsi.sense import Reason, ScsiError

    from .conftest import BS, make_lu

    lu = make_lu()
    caw = lu.ranges.locked(0, 8 * BS)
    await caw.__aenter__()
    write = asyncio.ensure_future(lu.store(0, b"W" * BS, False))
    zero = asyncio.ensure_future(lu.zero(BS, BS, unmap=False))
    await asyncio.sleep(0)
    lu.held = True
    await caw.__aexit__(None, None, None)
    for job in (write, zero):
        with pytest.raises(ScsiError) as err:
            await job
        assert err.value.reason is Reason.WRITE_PROTECTED
    assert await lu.backstore.read(0, BS) == bytes(BS)

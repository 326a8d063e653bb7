"""COMPARE AND WRITE on a journaled P-VOL against writes in flight (issue 8, the journaled path).

The group's write order makes a CAW wait for journaled volume writes in flight on its range, but a
command that is several journaled writes (WRITE SAME in 1 MiB pieces) can be caught between two of
them: the CAW then compares a state no serial order gives. Besides the host's answer, the S-VOL
must end up equal to the P-VOL: replaying the journal gives what the volume holds.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from storaged.backstore.memory import MemoryBackstore
from storaged.repl.journal import PrimaryJournal, read_entries
from storaged.repl.primary import JournaledStore, WriteOrder
from storaged.scsi.lu import LogicalUnit
from storaged.scsi.target import ScsiTarget
from storaged.scsi.types import Nexus, ScsiCommand, ScsiResult, Status

pytestmark = pytest.mark.asyncio

BS = 512
SIZE = 4 << 20
NEXUS = Nexus("iqn.2024-01.test:init1", bytes.fromhex("400001370000"), "t", 1)
#: the CAW's range straddles the boundary between WRITE SAME's first and second 1 MiB piece
EDGE = (1 << 20) // BS
LBA, N = EDGE - 4, 8


class PausingVolume(MemoryBackstore):
    """After :meth:`arm`, the next write lands whole, sets :attr:`landed` and returns only once
    :attr:`resume` is set (a pwrite in a thread that has written but not yet come back).
    With ``split`` it lands its first half only before pausing."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.armed = False
        self.split = False
        self.landed = asyncio.Event()
        self.resume = asyncio.Event()

    def arm(self, split: bool = False) -> None:
        self.armed, self.split = True, split

    async def write(self, offset, data, fua=False):  # type: ignore[no-untyped-def]
        if not self.armed:
            return await super().write(offset, data, fua)
        self.armed = False
        mv = memoryview(data).cast("B")
        half = (len(mv) // BS // 2) * BS if self.split else len(mv)
        await super().write(offset, mv[:half], fua)
        self.landed.set()
        await self.resume.wait()
        await super().write(offset + half, mv[half:], fua)


class Setup:
    async def start(self) -> None:
        self.journal = await PrimaryJournal.format(MemoryBackstore(16 << 20), "g", BS)
        self.volume = PausingVolume(SIZE)
        order = WriteOrder(self.journal, lambda why: None, lambda v, r: None)
        self.lu = LogicalUnit(JournaledStore(self.volume, order, 0), naa=bytes.fromhex("6005354f" + "11" * 12),
                              serial="SN0001", block_size=BS)
        self.target = ScsiTarget("t", {0: self.lu})
        await self.cmd(bytes(6))  # the power-on unit attention
        assert (await self.cmd(struct.pack(">BBQIBB", 0x8A, 0, LBA, N, 0, 0), b"A" * N * BS)).status == Status.GOOD

    async def cmd(self, cdb: bytes, data: bytes | None = None) -> ScsiResult:
        return await self.target.execute(ScsiCommand(cdb, 0, NEXUS, data))

    def caw(self, expected: bytes, new: bytes) -> asyncio.Future[ScsiResult]:
        return asyncio.ensure_future(self.cmd(struct.pack(">BBQxxxBBB", 0x89, 0, LBA, N, 0, 0), expected + new))

    async def replayed(self) -> bytes:
        """The contended range on an S-VOL that applied every journal entry in order."""
        j = self.journal
        svol = MemoryBackstore(SIZE)
        for e in await read_entries(j.store, j.sb, j.ptr.out_pos, j.ptr.out_seq, j.ptr.in_pos):
            if e.zero_length:
                await svol.write_zeroes(e.offset, e.zero_length)
            else:
                await svol.write(e.offset, e.data)
        return await svol.read(LBA * BS, N * BS)

    async def pvol(self) -> bytes:
        return await self.volume.read(LBA * BS, N * BS)


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def write_same_paused(s: Setup) -> asyncio.Future[ScsiResult]:
    """WRITE SAME of S over the first 2 MiB, paused after its first 1 MiB piece landed."""
    s.volume.arm()
    ws = asyncio.ensure_future(s.cmd(struct.pack(">BBQIBB", 0x93, 0, 0, 2 * EDGE, 0, 0), b"S" * BS))
    await s.volume.landed.wait()
    return ws


async def test_caw_does_not_match_a_write_same_caught_between_its_pieces() -> None:
    s = Setup()
    await s.start()
    ws = await write_same_paused(s)
    torn = b"S" * 4 * BS + b"A" * 4 * BS
    assert await s.pvol() == torn
    cmp = s.caw(torn, b"C" * N * BS)
    await settle()
    s.volume.resume.set()
    assert (await ws).status == Status.GOOD
    res = await cmp
    assert res.status == Status.CHECK_CONDITION and res.sense is not None and res.sense[2] & 0x0F == 0x0E
    assert await s.pvol() == b"S" * N * BS
    assert await s.replayed() == await s.pvol()


async def test_caw_expecting_the_whole_write_same_waits_and_journals_after_it() -> None:
    s = Setup()
    await s.start()
    ws = await write_same_paused(s)
    cmp = s.caw(b"S" * N * BS, b"C" * N * BS)
    await settle()
    assert not cmp.done()
    s.volume.resume.set()
    assert (await ws).status == Status.GOOD
    assert (await cmp).status == Status.GOOD
    assert await s.pvol() == b"C" * N * BS
    assert await s.replayed() == await s.pvol()


async def test_caw_does_not_match_a_torn_journaled_write() -> None:
    s = Setup()
    await s.start()
    s.volume.arm(split=True)
    write = asyncio.ensure_future(s.cmd(struct.pack(">BBQIBB", 0x8A, 0, LBA, N, 0, 0), b"B" * N * BS))
    await s.volume.landed.wait()
    torn = b"B" * 4 * BS + b"A" * 4 * BS
    assert await s.pvol() == torn
    cmp = s.caw(torn, b"C" * N * BS)
    await settle()
    s.volume.resume.set()
    assert (await write).status == Status.GOOD
    assert (await cmp).status == Status.CHECK_CONDITION
    assert await s.pvol() == b"B" * N * BS == await s.replayed()

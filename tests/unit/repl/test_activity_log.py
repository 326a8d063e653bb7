"""The activity log: persisted before the first write into a cold extent, batched, bounded,
emptied on a clean stop; recovery re-journals the suspect extents."""

from __future__ import annotations

import asyncio
import random

from storaged.backstore.memory import MemoryBackstore
from storaged.repl.activity import COPY_BYTES, SUPER_BYTES, ActivityLog, recover_primary
from storaged.repl.journal import PrimaryJournal, read_entries
from storaged.repl.primary import JournaledStore, WriteOrder
from storaged.sim.disk import BLOCK, DiskHandle, SimDisk

EXT = 64 * 1024


class CheckedVolume(MemoryBackstore):
    """A P-VOL that checks, at every write, that its extent is in the log on the journal LUN
    (durability itself is what tests/crash checks)."""

    def __init__(self, size: int, jstore: MemoryBackstore, journal: PrimaryJournal) -> None:
        super().__init__(size)
        self.jstore, self.journal = jstore, journal
        self.problems: list[str] = []

    async def write(self, offset, data, fua=False):  # type: ignore[no-untyped-def]
        _al, keys = await ActivityLog.load(self.journal, EXT)
        persisted = {(k >> 40, k & ((1 << 40) - 1)) for k in keys}
        if (0, offset // EXT) not in persisted:
            self.problems.append(f"write at {offset} before its extent was in the persisted log")
        await super().write(offset, data, fua)


async def setup(slots: int = 8) -> tuple[MemoryBackstore, PrimaryJournal, WriteOrder, CheckedVolume, JournaledStore]:
    jstore = MemoryBackstore(1 << 20)
    journal = await PrimaryJournal.format(jstore, "g", 512)
    order = WriteOrder(journal, lambda why: None, lambda v, r: None, activity=ActivityLog(journal, EXT, slots))
    vol = CheckedVolume(1 << 20, jstore, journal)
    return jstore, journal, order, vol, JournaledStore(vol, order, 0)


async def test_the_log_is_persisted_before_the_first_write_into_an_extent_and_not_for_hot_ones() -> None:
    jstore, _j, order, vol, store = await setup()
    al = order.activity
    assert al is not None
    flushes = jstore.flushes
    await store.write(0, b"a" * 4096)
    assert al.updates == 1 and jstore.flushes > flushes
    for i in range(1, 10):
        await store.write(i * 4096, b"b" * 4096)  # same extent: no update, no flush
    assert al.updates == 1 and not vol.problems


async def test_writes_arriving_together_share_one_update() -> None:
    _js, _j, order, vol, store = await setup()
    await asyncio.gather(*(store.write(i * EXT, b"c" * 4096) for i in range(6)))
    assert order.activity is not None and order.activity.updates == 1
    assert order.activity.hot == {(0, i) for i in range(6)} and not vol.problems


async def test_eviction_flushes_journal_and_volume_before_the_smaller_log() -> None:
    _js, _j, order, vol, store = await setup(slots=2)
    al = order.activity
    assert al is not None
    for i in range(3):
        await store.write(i * EXT, b"d" * 4096)
    assert al.hot == {(0, 1), (0, 2)}  # the least recently entered left
    assert vol.flushes >= 1 and not vol.problems
    _al, keys = await ActivityLog.load(order.journal, EXT)
    assert len(keys) == 2


async def test_a_torn_update_leaves_the_previous_copy() -> None:
    jstore, journal, order, _vol, store = await setup()
    await store.write(0, b"e" * 512)
    await store.write(EXT, b"e" * 512)
    assert order.activity is not None
    latest = SUPER_BYTES + (order.activity.counter % 2) * COPY_BYTES
    await jstore.write(latest + 10, b"\xff" * 8)  # the newest copy torn
    _al, keys = await ActivityLog.load(journal, EXT)
    assert keys == {0}  # the copy before it: extent 0 only


async def test_clean_close_empties_the_log() -> None:
    _js, journal, order, vol, store = await setup()
    await store.write(0, b"f" * 512)
    flushes = vol.flushes
    await order.close()
    assert vol.flushes > flushes
    _al, keys = await ActivityLog.load(journal, EXT)
    assert keys == set()


async def test_recovery_rejournals_suspect_extents_and_reports_what_did_not_fit() -> None:
    jstore, journal, _order, vol, store = await setup()
    await store.write(0, b"g" * 4096)
    await store.write(3 * EXT + 512, b"h" * 1024)
    # a power cut lost the journal entries but not the volume writes: the ring is wiped
    await jstore.write(journal.ring.head, bytes(64 * 1024))
    rec = await recover_primary(jstore, "g", journal.ring.head, 1, {0: vol}, extent=EXT)
    assert rec.tail == [] and sorted(rec.suspects) == [(0, 0, EXT), (0, 3 * EXT, EXT)]
    entries = await read_entries(jstore, rec.journal.sb, rec.journal.ptr.out_pos, rec.journal.ptr.out_seq,
                                 rec.journal.committed_pos)
    image = MemoryBackstore(1 << 20)
    for e in entries:
        await (image.write_zeroes(e.offset, e.zero_length) if e.zero_length else image.write(e.offset, e.data))
    assert await image.read(0, 1 << 20) == await vol.read(0, 1 << 20)
    assert rec.rejournaled == 2 * EXT and rec.unjournaled == {}
    assert entries and all(e.rejournaled for e in entries)  # told apart from host writes
    # the same with no journal room: everything goes to the bitmap
    rec2 = await recover_primary(jstore, "g", rec.journal.ptr.out_pos, rec.journal.ptr.out_seq, {0: vol},
                                 journaling=False, extent=EXT)
    assert rec2.unjournaled == {0: {0}}  # both extents lie in the first MiB region


class FirstWriteSticks(SimDisk):
    """A volatile cache that wrote back the first of several unsynced writes to a block and lost
    the later ones (a reordering cache may do exactly that at a power cut)."""

    def crash(self) -> tuple[int, int]:
        seen: set[int] = set()
        for p in self.pending:
            for off in range(0, len(p.data), BLOCK):
                b = (p.offset + off) // BLOCK
                if p.forced or b not in seen:
                    self.dur[p.offset + off:p.offset + off + BLOCK] = p.data[off:off + BLOCK]
                if not p.forced:
                    seen.add(b)
        self.pending.clear()
        self.cur[:] = self.dur
        return 0, 0


async def test_a_redo_is_durable_before_the_group_can_be_recorded_suspended() -> None:
    """Found by the simulator (crash_primary): the redo of the journal tail passes the P-VOL
    through older contents (a re-journaled hole, then the FUA write over it), all unsynced. If the
    recovery then suspends the group (the re-journal did not fit) and power is cut, the next start
    does not redo (a suspended group must not: its bitmap writes are newer than the tail), so the
    P-VOL kept the older content over an acknowledged FUA write."""
    rng = random.Random(1)
    jdisk = SimDisk("j", 1 << 20, rng, 1.0, lambda: 0.0)
    vdisk = FirstWriteSticks("v", 1 << 20, rng, 1.0, lambda: 0.0)
    block = 8 * BLOCK
    fua = b"F" * 4096
    journal = await PrimaryJournal.format(DiskHandle(jdisk), "g", 512)
    head = journal.ring.head
    await journal.append(0, block, b"", zero_length=4096)  # a hole, re-journaled by an earlier start
    await journal.append(0, block, fua)  # then the host's FUA write over it
    await journal.make_durable()
    await DiskHandle(vdisk).write(block, fua, fua=True)
    # a start that redoes the tail; the caller would then record the group suspended
    await recover_primary(DiskHandle(jdisk), "g", head, 1, {0: DiskHandle(vdisk)}, extent=EXT)
    jdisk.crash()
    vdisk.crash()
    await recover_primary(DiskHandle(jdisk), "g", head, 1, {0: DiskHandle(vdisk)}, journaling=False, extent=EXT)
    assert bytes(vdisk.cur[block:block + 4096]) == fua, "the FUA write is gone after the redo and a power cut"

"""Journal ring: append, wrap, purge, recovery by scanning, stale and torn entries."""

from __future__ import annotations

import os

import pytest

from storaged.backstore.memory import MemoryBackstore
from storaged.repl.journal import HEAD_LBA_BYTES, JournalFull, PrimaryJournal, read_entries

BS = 512


async def new_journal(size: int = 256 * 1024) -> tuple[MemoryBackstore, PrimaryJournal]:
    store = MemoryBackstore(size)
    return store, await PrimaryJournal.format(store, "g1", BS)


async def test_append_then_read_back_in_order() -> None:
    store, j = await new_journal()
    writes = [(v, i * 4096, os.urandom(100 + i * 300)) for i, v in enumerate([0, 1, 0, 2])]
    for v, off, data in writes:
        await j.append(v, off, data)
    got = await read_entries(store, j.sb, j.ptr.out_pos, j.ptr.out_seq, j.ptr.in_pos)
    assert [(e.seq, e.volume, e.offset, e.data) for e in got] == [(i + 1, v, o, d) for i, (v, o, d) in enumerate(writes)]
    assert j.status()["entries"] == 4


async def test_full_ring_refuses_then_purge_makes_room_and_wraps() -> None:
    store, j = await new_journal(64 * 1024 + HEAD_LBA_BYTES)
    appended = []
    with pytest.raises(JournalFull):
        for i in range(1000):
            appended.append(await j.append(0, i * 512, os.urandom(3000)))
    assert len(appended) > 5
    half = appended[len(appended) // 2]
    await j.purge(half.lba, half.seq)
    more = [await j.append(1, i * 512, os.urandom(3000)) for i in range(len(appended) // 2 - 1)]
    assert any(e.lba < half.lba for e in more), "the ring did not wrap"
    got = await read_entries(store, j.sb, j.ptr.out_pos, j.ptr.out_seq, j.ptr.in_pos)
    assert [e.seq for e in got] == list(range(half.seq, more[-1].seq + 1))
    assert got[-1].data == more[-1].data


async def test_reopen_finds_journal_in_by_scanning() -> None:
    store, j = await new_journal()
    for i in range(10):
        await j.append(0, i * 512, bytes([i]) * 700)
    fourth = (await j.scan(j.ptr.out_pos, j.ptr.out_seq, None))[3]
    await j.purge(fourth.lba, fourth.seq)
    reopened, tail = await PrimaryJournal.open(store, "g1", j.ptr.out_pos, j.ptr.out_seq)
    assert (reopened.ptr.in_pos, reopened.ptr.next_seq) == (j.ptr.in_pos, j.ptr.next_seq)
    assert [e.seq for e in tail] == list(range(4, 11))


async def test_entries_of_an_earlier_epoch_are_not_taken_for_current_ones() -> None:
    store, j = await new_journal()
    for i in range(5):
        await j.append(0, 0, os.urandom(600))
    j2 = await PrimaryJournal.format(store, "g1", BS)  # the LUN is given to the group again
    await j2.append(0, 0, os.urandom(600))
    _, tail = await PrimaryJournal.open(store, "g1", j2.sb.head, 1)
    assert [e.seq for e in tail] == [1]


async def test_torn_last_entry_ends_the_scan() -> None:
    store, j = await new_journal()
    for i in range(3):
        last = await j.append(0, 0, os.urandom(2000))
    raw = bytearray(await store.read(last.lba, last.span))
    raw[200] ^= 0xFF  # corrupt the data of the last entry, as a crash mid-write would
    await store.write(last.lba, bytes(raw))
    _, tail = await PrimaryJournal.open(store, "g1", j.sb.head, 1)
    assert [e.seq for e in tail] == [1, 2]


async def test_commit_waits_for_every_earlier_entry() -> None:
    """Entries are written side by side, but one is committed (may reach the volume and be
    acknowledged) only when all earlier ones are in the journal: a later read stops at a gap."""
    import asyncio

    store, j = await new_journal()
    r1 = j.reserve(0, 0, b"1" * 600)
    r2 = j.reserve(0, 4096, b"2" * 600)
    await j.write_reserved(r2)
    waiter = asyncio.ensure_future(j.commit(r2))
    await asyncio.sleep(0.01)
    assert not waiter.done() and j.status()["next_seq"] == 1  # nothing committed, nothing offered to readers
    # a crash now: the journal holds entry 2 but not entry 1, so recovery finds nothing
    _, tail = await PrimaryJournal.open(store, "g1", j.sb.head, 1)
    assert tail == []
    await j.write_reserved(r1)
    await j.commit(r1)
    await waiter
    assert j.status()["next_seq"] == 3


async def test_a_never_acknowledged_entry_is_not_replayed_after_its_predecessor_is_rewritten() -> None:
    """Defect 1: entry 2 reached the ring, entry 1 did not, crash; after the restart a new entry 1
    of the same size is written and acknowledged, crash again. The stale entry 2 (never
    acknowledged, from before the first crash) must not be taken for the successor of the new 1."""
    store, j = await new_journal()
    r1 = j.reserve(0, 0, b"1" * 4000)
    r2 = j.reserve(0, 8192, b"old2" * 1000)
    await j.write_reserved(r2)  # crash before r1 is written
    j2, tail = await PrimaryJournal.open(store, "g1", j.sb.head, 1)
    assert tail == []
    new1 = await j2.append(0, 0, b"N" * 4000)  # same size: entry 2's old position follows it exactly
    assert new1.seq == 1 and new1.lba == r1.pos
    _, tail = await PrimaryJournal.open(store, "g1", j.sb.head, 1)
    assert [(e.seq, e.data[:1]) for e in tail] == [(1, b"N")]


async def test_a_journal_written_before_generations_opens_and_keeps_its_entries() -> None:
    """Journals written by the code before generations existed (superblock version 1, entries
    with zeros where the generation is) still open, and their tail is still found."""
    from storaged.repl.journal import SUPER_MAGIC, SUPER_V1, _crc, encode_entry

    store = MemoryBackstore(256 * 1024)
    body = SUPER_V1.pack(SUPER_MAGIC, 1, BS, b"g1".ljust(64, b"\0"), HEAD_LBA_BYTES, 256 * 1024, 77, 0)
    await store.write(0, body[:-4] + _crc(body[:-4]).to_bytes(4, "big"))
    pos = HEAD_LBA_BYTES
    for seq in (1, 2):
        raw = b"".join(bytes(b) for b in encode_entry(77, seq, 5, 0, seq * 512, bytes([seq]) * 700, BS))
        await store.write(pos, raw)
        pos += len(raw)
    j, tail = await PrimaryJournal.open(store, "g1", HEAD_LBA_BYTES, 1)
    assert [e.seq for e in tail] == [1, 2] and j.sb.generation == 1
    await j.append(0, 0, b"x" * 100)
    _, tail = await PrimaryJournal.open(store, "g1", HEAD_LBA_BYTES, 1)
    assert [e.seq for e in tail] == [1, 2, 3]


class GatedFlush(MemoryBackstore):
    """A store whose flushes wait for the test to let them finish."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        import asyncio

        self.gate = asyncio.Event()

    async def flush(self) -> None:
        await self.gate.wait()
        await super().flush()


async def test_durable_point_is_what_was_committed_before_the_flush_started() -> None:
    import asyncio

    store = GatedFlush(256 * 1024)
    store.gate.set()
    j = await PrimaryJournal.format(store, "g1", BS)
    await j.append(0, 0, b"a" * 600)
    flushes = store.flushes
    store.gate.clear()
    first = asyncio.ensure_future(j.make_durable())
    for _ in range(3):
        await asyncio.sleep(0)  # the flush is under way
    one = j.committed_pos
    await j.append(0, 0, b"b" * 600)  # committed while the flush runs: not covered by it
    store.gate.set()
    await first
    assert (j.durable_seq, j.durable_pos) == (1, one)
    store.gate.clear()
    await j.append(0, 0, b"c" * 600)
    callers = [asyncio.ensure_future(j.make_durable()) for _ in range(4)]
    for _ in range(3):
        await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*callers)
    assert (j.durable_seq, j.durable_pos) == (3, j.committed_pos)
    assert store.flushes - flushes == 2  # one for the first caller, one shared by the next four
    st = j.status()
    assert (st["durable_seq"], st["durable_in"]) == (3, j.committed_pos)
    await j.make_durable()
    assert store.flushes - flushes == 2  # nothing new committed: no flush


async def test_reopen_makes_the_recovered_tail_durable() -> None:
    store, j = await new_journal()
    for i in range(3):
        await j.append(0, i * 512, b"z" * 512)
    assert j.durable_seq == 0
    flushes = store.flushes
    j2, _tail = await PrimaryJournal.open(store, "g1", j.sb.head, 1)
    assert store.flushes > flushes and (j2.durable_seq, j2.durable_pos) == (3, j.committed_pos)

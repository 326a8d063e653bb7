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
    await j.purge(*(lambda e: (e.lba, e.seq))((await j.scan(j.ptr.out_pos, j.ptr.out_seq, None))[3]))
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
    entry2 = await waiter
    assert entry2.seq == 2 and j.status()["next_seq"] == 3

"""The primary's write path: journal order is the order writes land on the volume."""

from __future__ import annotations

import asyncio

from storaged.backstore.memory import MemoryBackstore
from storaged.repl.journal import PrimaryJournal, read_entries
from storaged.repl.primary import JournaledStore, WriteOrder


class SlowFirstWrite(MemoryBackstore):
    """The first volume write takes a while, so a later overlapping write could overtake it."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.calls = 0

    async def write(self, offset, data, fua=False):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.05)
        await super().write(offset, data, fua)


async def make() -> tuple[SlowFirstWrite, JournaledStore, PrimaryJournal]:
    jstore = MemoryBackstore(1 << 20)
    journal = await PrimaryJournal.format(jstore, "g", 512)
    vol = SlowFirstWrite(1 << 20)
    order = WriteOrder(journal, lambda why: None, lambda v, r: None)
    return vol, JournaledStore(vol, order, 0), journal


async def test_overlapping_concurrent_writes_land_in_journal_order() -> None:
    vol, store, journal = await make()
    first = asyncio.ensure_future(store.write(0, b"A" * 4096))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(store.write(1024, b"B" * 1024))
    await asyncio.gather(first, second)
    entries = await read_entries(journal.store, journal.sb, journal.ptr.out_pos, journal.ptr.out_seq, journal.ptr.in_pos)
    assert [e.data[:1] for e in entries] == [b"A", b"B"]
    data = await vol.read(0, 4096)
    assert data[1024:2048] == b"B" * 1024 and data[:1024] == b"A" * 1024  # B, journaled second, wins


async def test_non_overlapping_writes_do_not_wait_for_each_other() -> None:
    _vol, store, _journal = await make()
    slow = asyncio.ensure_future(store.write(0, b"A" * 512))
    await asyncio.sleep(0)
    await store.write(8192, b"C" * 512)  # completes while the first is still in its slow write
    assert not slow.done()
    await slow


class FailingVolume(MemoryBackstore):
    async def write(self, offset, data, fua=False):  # type: ignore[no-untyped-def]
        from storaged.backstore.base import BackstoreError

        raise BackstoreError("medium error")


async def test_a_failed_volume_write_is_reported_and_its_region_resynced_not_replicated_as_done() -> None:
    """Defect 5: the entry is committed, then the volume write fails. The host gets the error,
    and the pair suspends with the region in the differential bitmap (a resync copies what the
    P-VOL really holds), since the entry still goes to the S-VOL."""
    import pytest

    from storaged.backstore.base import BackstoreError

    journal = await PrimaryJournal.format(MemoryBackstore(1 << 20), "g", 512)
    suspended: list[str] = []
    persisted: list[tuple[int, set[int]]] = []
    order = WriteOrder(journal, suspended.append, lambda v, r: persisted.append((v, set(r))))
    store = JournaledStore(FailingVolume(4 << 20), order, 3)
    with pytest.raises(BackstoreError):
        await store.write((2 << 20) + 512, b"x" * 4096)
    assert suspended and not order.journaling
    assert order.dirty == {3: {2}} and persisted == [(3, {2})]


async def test_an_async_dirty_callback_is_awaited_before_the_volume_write() -> None:
    """Defect 12: the bitmap is persisted off the event loop (an async callback), and a write
    into a new dirty region reaches the volume only after that persist finished."""
    journal = await PrimaryJournal.format(MemoryBackstore(1 << 20), "g", 512)
    vol = MemoryBackstore(4 << 20)
    gate = asyncio.Event()
    persisted: list[set[int]] = []

    async def on_dirty(volume: int, regions: set[int]) -> None:
        await gate.wait()
        persisted.append(set(regions))

    order = WriteOrder(journal, lambda why: None, on_dirty)
    order.journaling = False  # suspended: writes are tracked in the bitmap
    store = JournaledStore(vol, order, 0)
    first = asyncio.ensure_future(store.write(0, b"a" * 512))
    second = asyncio.ensure_future(store.write(4096, b"b" * 512))  # same region, must wait as well
    for _ in range(5):
        await asyncio.sleep(0)
    assert await vol.read(0, 8192) == bytes(8192) and not first.done() and not second.done()
    gate.set()
    await asyncio.gather(first, second)
    assert persisted == [{0}] and (await vol.read(0, 1))[:1] == b"a" and (await vol.read(4096, 1)) == b"b"


async def test_volumes_are_made_durable_for_a_purge_only_after_the_purged_entries_reached_them() -> None:
    """An entry is committed (and may be acquired) before its volume write is issued; making the
    P-VOLs durable for a purge must wait for that write, or the flush misses it."""
    vol, store, journal = await make()
    write = asyncio.ensure_future(store.write(0, b"A" * 4096))  # the slow first volume write
    while journal.committed_seq < 1:
        await asyncio.sleep(0)
    flushes = vol.flushes
    await store.order.make_volumes_durable(journal.committed_seq + 1)
    assert write.done() and vol.flushes > flushes

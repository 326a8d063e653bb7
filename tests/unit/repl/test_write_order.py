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
    vol, store, journal = await make()
    slow = asyncio.ensure_future(store.write(0, b"A" * 512))
    await asyncio.sleep(0)
    await store.write(8192, b"C" * 512)  # completes while the first is still in its slow write
    assert not slow.done()
    await slow

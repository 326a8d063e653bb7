"""The primary side's write path: every write to a P-VOL is journaled in the group's write order.

A paired P-VOL's logical unit gets a :class:`JournaledStore` in front of its backing store. Under
the group's lock (one order for all volumes of the group: a consistency group) each write takes
the next sequence number, lands in the journal, then on the volume; only then does the host get
its answer. While the pair is suspended the write is recorded in a differential bitmap instead, so
a resync copies only what changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..backstore.base import Backstore, Extent, first_difference
from .journal import JournalFull, PrimaryJournal, Reservation

#: differential bitmap granularity: one bit (here: one set member) per MiB of volume
REGION = 1 << 20


@dataclass(slots=True, eq=False)
class _InFlight:
    volume: int
    start: int
    end: int
    done: asyncio.Event


class WriteOrder:
    """One journal group's write order on the primary, and what happens when the journal is full."""

    def __init__(self, journal: PrimaryJournal, on_full: Callable[[str], None],
                 on_dirty: Callable[[int, set[int]], None], delay_limit: float = 0.0) -> None:
        self.journal = journal
        self._inflight: list[_InFlight] = []
        #: "delay" policy: how long a write may wait for journal room before the pairs suspend
        self.delay_limit = delay_limit
        self.lock = asyncio.Lock()
        self.journaling = True
        self.dirty: dict[int, set[int]] = {}
        self._on_full = on_full
        self._on_dirty = on_dirty

    def mark(self, volume: int, offset: int, length: int) -> None:
        regions = self.dirty.setdefault(volume, set())
        new = set(range(offset // REGION, (offset + max(length, 1) - 1) // REGION + 1)) - regions
        if new:
            regions |= new
            self._on_dirty(volume, new)  # persisted before the write is acknowledged

    def _suspend(self, why: str) -> None:
        # Policy "suspend" (and any journal failure): the pairs go PSUE and the bitmap takes over.
        if self.journaling:
            self.journaling = False
            self._on_full(why)

    def _reserve(self, volume: int, offset: int, data: bytes | bytearray | memoryview, zero: int) -> Reservation | None:
        """Under the lock: the write's place in the group's order, or None when not journaling."""
        if self.journaling:
            try:
                return self.journal.reserve(volume, offset, data, zero_length=zero)
            except JournalFull as exc:
                self._suspend(str(exc))
        self.mark(volume, offset, zero or len(data))
        return None

    async def _commit(self, r: Reservation | None) -> None:
        """Write the entry (concurrently with other writes' entries) and wait until it and every
        earlier entry are in the journal; on a journal failure, suspend and keep the data."""
        if r is None:
            return
        try:
            await self.journal.write_reserved(r)
            await self.journal.commit(r)
        except Exception as exc:  # noqa: BLE001 - the host write itself still succeeds
            self._suspend(f"journal write failed: {exc}")
            self.mark(r.volume, r.offset, r.zero_length or len(r.data))

    async def _room(self, length: int) -> None:
        """Under the "delay" policy, hold a write (outside the lock, so purges go on) until the
        journal has room for it or the limit passes."""
        if not self.journaling or self.delay_limit <= 0 or self.journal.fits(length):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delay_limit
        while not self.journal.fits(length) and loop.time() < deadline and self.journaling:
            await asyncio.sleep(0.005)

    def _register(self, volume: int, start: int, end: int) -> tuple[_InFlight, list[asyncio.Event]]:
        """Record a volume write about to start (under the lock, so in sequence order) and the
        earlier in-flight writes it overlaps, which must land on the volume first."""
        waits = [f.done for f in self._inflight if f.volume == volume and f.start < end and start < f.end]
        me = _InFlight(volume, start, end, asyncio.Event())
        self._inflight.append(me)
        return me, waits

    async def _apply(self, me: _InFlight, waits: list[asyncio.Event], op: Callable[[], Awaitable[None]]) -> None:
        try:
            for w in waits:
                await w.wait()
            await op()
        finally:
            me.done.set()
            self._inflight.remove(me)

    async def write(self, volume: int, store: Backstore, offset: int, data: bytes | bytearray | memoryview,
                    fua: bool) -> None:
        # The journal append is serialised (it defines the order); the volume writes of
        # non-overlapping requests then run side by side, overlapping ones in sequence order.
        await self._room(len(data))
        async with self.lock:
            r = self._reserve(volume, offset, data, 0)
            me, waits = self._register(volume, offset, offset + len(data))
        try:
            await self._commit(r)
        except BaseException:
            me.done.set()
            self._inflight.remove(me)
            raise
        await self._apply(me, waits, lambda: store.write(offset, data, False))
        if fua:
            await self.sync(store)

    async def zero(self, volume: int, store: Backstore, offset: int, length: int, unmap: bool) -> None:
        await self._room(0)
        async with self.lock:
            r = self._reserve(volume, offset, b"", length)
            me, waits = self._register(volume, offset, offset + length)
        try:
            await self._commit(r)
        except BaseException:
            me.done.set()
            self._inflight.remove(me)
            raise
        await self._apply(me, waits, lambda: store.unmap(offset, length) if unmap else store.write_zeroes(offset, length))

    async def compare_and_write(self, volume: int, store: Backstore, offset: int,
                                expected: bytes | bytearray | memoryview, data: bytes | bytearray | memoryview,
                                fua: bool) -> int:
        end = offset + len(expected)
        async with self.lock:
            # compare against every write ordered before this one
            for f in [f for f in self._inflight if f.volume == volume and f.start < end and offset < f.end]:
                await f.done.wait()
            diff = first_difference(await store.read(offset, len(expected)), expected)
            if diff < 0:
                await self._commit(self._reserve(volume, offset, data, 0))
                await store.write(offset, data, False)
        if diff < 0 and fua:
            await self.sync(store)
        return diff

    async def sync(self, store: Backstore) -> None:
        await self.journal.flush()
        await store.flush()


class JournaledStore(Backstore):
    """A P-VOL's backing store with journaling in front (reads pass straight through)."""

    def __init__(self, inner: Backstore, order: WriteOrder, volume: int) -> None:
        self.inner = inner
        self.order = order
        self.volume = volume
        self.size = inner.size
        self.thin = inner.thin

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        await self.order.write(self.volume, self.inner, offset, data, fua)

    async def flush(self) -> None:
        await self.order.sync(self.inner)

    async def unmap(self, offset: int, length: int) -> None:
        await self.order.zero(self.volume, self.inner, offset, length, unmap=True)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.order.zero(self.volume, self.inner, offset, length, unmap=False)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await self.inner.extents(offset, length)

    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool = False) -> int:
        return await self.order.compare_and_write(self.volume, self.inner, offset, expected, data, fua)

    def close(self) -> None:
        self.inner.close()

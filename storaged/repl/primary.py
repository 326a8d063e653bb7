"""The primary side's write path: every write to a P-VOL is journaled in the group's write order.

A paired P-VOL's logical unit gets a :class:`JournaledStore` in front of its backing store. Under
the group's lock (one order for all volumes of the group: a consistency group) each write takes
the next sequence number, lands in the journal, then on the volume; only then does the host get
its answer. While the pair is suspended the write is recorded in a differential bitmap instead, so
a resync copies only what changed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..backstore.base import Backstore, BackstoreUnavailable, Extent, first_difference
from .activity import ActivityLog
from .journal import JournalFull, PrimaryJournal, Reservation

#: differential bitmap granularity: one bit (here: one set member) per MiB of volume
REGION = 1 << 20


@dataclass(slots=True, eq=False)
class _InFlight:
    volume: int
    start: int
    end: int
    done: asyncio.Event
    seq: int = 0  # its journal entry (0: not journaled)


@dataclass(slots=True, eq=False)
class _Ticket:
    """A write's place in the group's order, between _enter (under the lock) and _land."""

    r: Reservation | None
    marks: list[asyncio.Future[None]]
    me: _InFlight
    waits: list[asyncio.Event]
    al: ActivityLog | None
    hot: Awaitable[None] | None


class WriteOrder:
    """One journal group's write order on the primary, and what happens when the journal is full.

    Per journaled write: entry reserved under the lock, entry written and committed, the write's
    extent in the activity log (persisted first if it was not), then the volume write. A volume
    write that fails after its entry was committed suspends the pairs with its region in the
    differential bitmap: the entry still reaches the S-VOL, so a resync must copy the region."""

    def __init__(self, journal: PrimaryJournal, on_full: Callable[[str], None],
                 on_dirty: Callable[[int, set[int]], Awaitable[None] | None], delay_limit: float = 0.0,
                 activity: ActivityLog | None = None) -> None:
        self.journal = journal
        self._inflight: list[_InFlight] = []
        #: host writes between entering the order and their answer (a FUA flush included)
        self._open = 0
        self._all_answered = asyncio.Event()
        self._all_answered.set()
        #: "delay" policy: how long a write may wait for journal room before the pairs suspend
        self.delay_limit = delay_limit
        self.lock = asyncio.Lock()
        self.journaling = True
        self.fenced = False  # FENCED: no host write may enter the order
        self.dirty: dict[int, set[int]] = {}
        #: each P-VOL's own store (registered by JournaledStore), for flushes before a purge
        self.volumes: dict[int, Backstore] = {}
        self.activity = activity
        if activity is not None and activity.flush_volumes is None:
            activity.flush_volumes = self.flush_volumes
        self._on_full = on_full
        self._on_dirty = on_dirty
        self._dirty_persisting: dict[tuple[int, int], asyncio.Future[None]] = {}

    # --- the differential bitmap -----------------------------------------------------------------

    def _mark_now(self, volume: int, offset: int, length: int) -> list[asyncio.Future[None]]:
        """Record the regions at once (in write order); returns the persists to wait for before
        the volume write (a crash must not leave a written region unrecorded)."""
        regions = self.dirty.setdefault(volume, set())
        span = range(offset // REGION, (offset + max(length, 1) - 1) // REGION + 1)
        new = {r for r in span if r not in regions}
        waits = [self._dirty_persisting[(volume, r)] for r in span if (volume, r) in self._dirty_persisting] \
            if self._dirty_persisting else []
        if new:
            regions |= new
            fut = asyncio.ensure_future(self._persist_dirty(volume, new))
            for r in new:
                self._dirty_persisting[(volume, r)] = fut
            waits.append(fut)
        return waits

    async def _persist_dirty(self, volume: int, new: set[int]) -> None:
        try:
            res = self._on_dirty(volume, set(new))
            if inspect.isawaitable(res):  # the async callback (off the loop); a plain one still works
                await res
        except BaseException:
            self.dirty.get(volume, set()).difference_update(new)  # not recorded: the next write retries
            raise
        finally:
            for r in new:
                self._dirty_persisting.pop((volume, r), None)

    async def mark(self, volume: int, offset: int, length: int) -> None:
        """Record a range in the bitmap and wait until it is persisted."""
        for w in self._mark_now(volume, offset, length):
            await asyncio.shield(w)

    def _suspend(self, why: str) -> None:
        # Policy "suspend" (and any journal failure): the pairs go PSUE and the bitmap takes over.
        if self.journaling:
            self.journaling = False
            self._on_full(why)

    # --- ordering ----------------------------------------------------------------------------------

    def _reserve(self, volume: int, offset: int, data: bytes | bytearray | memoryview,
                 zero: int) -> tuple[Reservation | None, list[asyncio.Future[None]]]:
        """Under the lock: the write's place in the group's order, or the bitmap persists to wait
        for when not journaling. A write that passed the LU's write-protect check just before a
        fence is refused here (NOT READY): it is past the fence in the group's order."""
        if self.fenced:
            raise BackstoreUnavailable("the group's P-VOLs are fenced")
        if self.journaling:
            try:
                return self.journal.reserve(volume, offset, data, zero_length=zero), []
            except JournalFull as exc:
                self._suspend(str(exc))
        return None, self._mark_now(volume, offset, zero or len(data))

    async def _commit(self, r: Reservation | None, waits: list[asyncio.Future[None]]) -> None:
        """Write the entry (concurrently with other writes' entries) and wait until it and every
        earlier entry are in the journal; on a journal failure, suspend and keep the data."""
        for w in waits:
            await asyncio.shield(w)
        if r is None:
            return
        try:
            await self.journal.write_reserved(r)
            await self.journal.commit(r)
        except Exception as exc:  # noqa: BLE001 - the host write itself still succeeds
            self._suspend(f"journal write failed: {exc}")
            await self.mark(r.volume, r.offset, r.zero_length or len(r.data))

    async def _room(self, length: int) -> None:
        """Under the "delay" policy, hold a write (outside the lock, so purges go on) until the
        journal has room for it or the limit passes."""
        if not self.journaling or self.delay_limit <= 0 or self.journal.fits(length):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delay_limit
        while not self.journal.fits(length) and loop.time() < deadline and self.journaling:
            await asyncio.sleep(0.005)

    def _register(self, volume: int, start: int, end: int, seq: int = 0) -> tuple[_InFlight, list[asyncio.Event]]:
        """Record a volume write about to start (under the lock, so in sequence order) and the
        earlier in-flight writes it overlaps, which must land on the volume first."""
        waits = [f.done for f in self._inflight if f.volume == volume and f.start < end and start < f.end]
        me = _InFlight(volume, start, end, asyncio.Event(), seq)
        self._inflight.append(me)
        return me, waits

    def _enter(self, volume: int, start: int, end: int, data: bytes | bytearray | memoryview,
               zero: int) -> _Ticket:
        """Under the lock: the write's place in the order (journal entry or bitmap mark), its
        in-flight record and the earlier overlapping writes to wait for, its activity-log extent."""
        r, marks = self._reserve(volume, start, data, zero)
        me, waits = self._register(volume, start, end, r.seq if r is not None else 0)
        al = self.activity if r is not None else None
        hot = al.enter(volume, start, end) if al is not None else None
        return _Ticket(r, marks, me, waits, al, hot)

    async def _land(self, t: _Ticket, op: Callable[[], Awaitable[None]]) -> None:
        """Commit the entry, wait for the activity log and earlier overlapping writes, then the
        volume write; a volume failure after the commit suspends with the region marked."""
        try:
            await self._commit(t.r, t.marks)
            if t.hot is not None:
                await asyncio.shield(t.hot)
            for w in t.waits:
                await w.wait()
            try:
                await op()
            except Exception as exc:
                if t.r is not None:
                    await self._volume_failed(t.r, exc)
                raise
        finally:
            t.me.done.set()
            self._inflight.remove(t.me)
            if t.al is not None:
                t.al.leave(t.me.volume, t.me.start, t.me.end)

    async def _ordered(self, volume: int, start: int, end: int, data: bytes | bytearray | memoryview,
                       zero: int, op: Callable[[], Awaitable[None]]) -> None:
        """The common path of WRITE, UNMAP and WRITE SAME: reserve, commit, activity log, volume."""
        async with self.lock:
            ticket = self._enter(volume, start, end, data, zero)
        await self._land(ticket, op)

    async def _volume_failed(self, r: Reservation, exc: Exception) -> None:
        """The entry is committed (and will reach the S-VOL) but the P-VOL write failed: suspend
        and record the region, so a resync copies what the P-VOL really holds there."""
        self._suspend(f"P-VOL {r.volume} write failed after its journal entry {r.seq}: {exc}")
        await self.mark(r.volume, r.offset, r.zero_length or len(r.data))

    def _opened(self) -> None:
        self._open += 1
        self._all_answered.clear()

    def _closed(self) -> None:
        self._open -= 1
        if not self._open:
            self._all_answered.set()

    async def answered(self) -> None:
        """Wait until every host write that entered the order has been answered, its FUA flush
        included. A fence waits for this (outside the lock: a write waiting for the lock is then
        refused at once), so the old primary answers nothing after a takeover made the other
        side writable."""
        await self._all_answered.wait()

    async def write(self, volume: int, store: Backstore, offset: int, data: bytes | bytearray | memoryview,
                    fua: bool) -> None:
        # The journal append is serialised (it defines the order); the volume writes of
        # non-overlapping requests then run side by side, overlapping ones in sequence order.
        self._opened()
        try:
            await self._room(len(data))
            await self._ordered(volume, offset, offset + len(data), data, 0, lambda: store.write(offset, data, False))
            if fua:
                await self.sync(store)
        finally:
            self._closed()

    async def zero(self, volume: int, store: Backstore, offset: int, length: int, unmap: bool) -> None:
        self._opened()
        try:
            await self._room(0)
            await self._ordered(volume, offset, offset + length, b"", length,
                                lambda: store.unmap(offset, length) if unmap else store.write_zeroes(offset, length))
        finally:
            self._closed()

    async def compare_and_write(self, volume: int, store: Backstore, offset: int,
                                expected: bytes | bytearray | memoryview, data: bytes | bytearray | memoryview,
                                fua: bool) -> int:
        self._opened()
        try:
            return await self._compare_and_write(volume, store, offset, expected, data, fua)
        finally:
            self._closed()

    async def _compare_and_write(self, volume: int, store: Backstore, offset: int,
                                 expected: bytes | bytearray | memoryview, data: bytes | bytearray | memoryview,
                                 fua: bool) -> int:
        end = offset + len(expected)
        async with self.lock:
            # compare against every write ordered before this one
            for f in [f for f in self._inflight if f.volume == volume and f.start < end and offset < f.end]:
                await f.done.wait()
            diff = first_difference(await store.read(offset, len(expected)), expected)
            if diff < 0:  # written under the lock: no overlapping write can come between
                await self._land(self._enter(volume, offset, end, data, 0),
                                 lambda: store.write(offset, data, False))
        if diff < 0 and fua:
            await self.sync(store)
        return diff

    async def sync(self, store: Backstore) -> None:
        await self.journal.flush()
        await store.flush()

    # --- durability for purge and shutdown -----------------------------------------------------

    async def flush_volumes(self, volumes: set[int] | None = None) -> None:
        """Flush the P-VOLs (all, or those named) side by side."""
        stores = [s for v, s in self.volumes.items() if volumes is None or v in volumes]
        await asyncio.gather(*(s.flush() for s in stores))

    async def drain(self) -> None:
        """Wait until every write already in the order (journaled or bitmap-tracked) has finished:
        a fence or a resync then sees all of them."""
        for f in list(self._inflight):
            await f.done.wait()

    async def make_volumes_durable(self, upto_seq: int | None = None) -> None:
        """Before journal-out is persisted by a purge up to ``upto_seq`` (default: everything
        committed): the volume writes of those entries done, then the journal and the P-VOLs
        flushed. Otherwise a crash could leave a P-VOL without a write whose entry the purge
        already freed (the S-VOL has it, the P-VOL not, and no redo can tell); an entry is
        committed, and may be acquired, before its volume write has even been issued."""
        limit = self.journal.committed_seq + 1 if upto_seq is None else upto_seq
        for f in [f for f in self._inflight if 0 < f.seq < limit]:
            await f.done.wait()
        await self.journal.make_durable()
        await self.flush_volumes()

    async def close(self) -> None:
        """Clean shutdown, after host writes stopped: everything durable, activity log empty."""
        if self.activity is not None:
            await self.activity.empty()
        else:
            await self.make_volumes_durable()


class JournaledStore(Backstore):
    """A P-VOL's backing store with journaling in front (reads pass straight through)."""

    def __init__(self, inner: Backstore, order: WriteOrder, volume: int) -> None:
        self.inner = inner
        self.order = order
        self.volume = volume
        order.volumes[volume] = inner
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

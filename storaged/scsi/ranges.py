"""Per-LU tracking of writes in flight by byte range, so COMPARE AND WRITE is atomic (issue 8).

Every write command holds its range *shared* for its whole duration: writes keep running side by
side, overlapping or not, exactly as before. COMPARE AND WRITE, WRITE ATOMIC and ORWRITE hold
their range *exclusive*: they wait for the overlapping holds that arrived before them (a large
write half-landed in a thread, or waiting for a peer) and every overlapping hold that arrives
after them waits until they are done. Holds are ordered by arrival and each waits only for
earlier ones, so there is no deadlock; an exclusive hold cannot be starved by a stream of writes.

The hot path is cheap: a shared hold is one small record added to and removed from a set; only
while an exclusive hold exists does a new write scan for overlaps.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Hold:
    """One command's claim on ``[start, end)``; :attr:`blockers` are the earlier overlapping holds
    it must outlive (empty for a write when no exclusive hold is around)."""

    __slots__ = ("blockers", "end", "exclusive", "start", "waiters")

    def __init__(self, start: int, end: int, exclusive: bool, blockers: list[Hold] | None) -> None:
        self.start = start
        self.end = end
        self.exclusive = exclusive
        self.blockers = blockers
        #: futures of later holds waiting for this one (created only when someone waits)
        self.waiters: list[asyncio.Future[None]] | None = None


class RangeTracker:
    """The holds of one logical unit; offsets are whatever unit the caller uses (bytes here)."""

    __slots__ = ("_exclusive", "_holds")

    def __init__(self) -> None:
        self._holds: set[Hold] = set()
        self._exclusive = 0

    def __len__(self) -> int:
        return len(self._holds)

    def shared(self, start: int, end: int) -> Hold:
        """Register a write at once (before its first await, so a later CAW sees it). If
        :attr:`Hold.blockers` is set, :meth:`wait` before touching the store."""
        blockers = None
        if self._exclusive:
            blockers = [h for h in self._holds if h.exclusive and h.start < end and start < h.end] or None
        hold = Hold(start, end, False, blockers)
        self._holds.add(hold)
        return hold

    def exclusive(self, start: int, end: int) -> Hold:
        """Register a read-modify-write command; it must :meth:`wait` for its blockers."""
        blockers = [h for h in self._holds if h.start < end and start < h.end] or None
        hold = Hold(start, end, True, blockers)
        self._holds.add(hold)
        self._exclusive += 1
        return hold

    async def wait(self, hold: Hold) -> None:
        """Wait until every earlier overlapping hold is released. On cancellation the caller's
        ``finally`` still releases ``hold``."""
        blockers, hold.blockers = hold.blockers, None
        if not blockers:
            return
        loop = asyncio.get_running_loop()
        for b in blockers:
            if b in self._holds:
                fut: asyncio.Future[None] = loop.create_future()
                if b.waiters is None:
                    b.waiters = [fut]
                else:
                    b.waiters.append(fut)
                await fut

    def release(self, hold: Hold) -> None:
        """End a hold (always, in a ``finally``: an aborted command must not keep its range)."""
        if hold not in self._holds:
            return
        self._holds.discard(hold)
        if hold.exclusive:
            self._exclusive -= 1
        waiters, hold.waiters = hold.waiters, None
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def locked(self, start: int, end: int) -> HeldRange:
        """``async with tracker.locked(a, b):`` an exclusive hold for the block."""
        return HeldRange(self, start, end, True)

    def writing(self, start: int, end: int) -> HeldRange:
        """``async with tracker.writing(a, b):`` a shared hold for a multi-step write."""
        return HeldRange(self, start, end, False)


class HeldRange:
    """Async context manager for one hold (the paths off the hot path: WRITE SAME, UNMAP, CAW)."""

    __slots__ = ("_end", "_exclusive", "_hold", "_start", "_tracker")

    def __init__(self, tracker: RangeTracker, start: int, end: int, exclusive: bool) -> None:
        self._tracker = tracker
        self._start = start
        self._end = end
        self._exclusive = exclusive
        self._hold: Hold | None = None

    async def __aenter__(self) -> None:
        t = self._tracker
        hold = self._hold = (t.exclusive if self._exclusive else t.shared)(self._start, self._end)
        try:
            await self._tracker.wait(hold)
        except BaseException:
            self._tracker.release(hold)
            raise

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._hold is not None:
            self._tracker.release(self._hold)
            self._hold = None

"""A simulated disk with a volatile write cache (after TigerBeetle's ``testing/storage.zig``).

Writes are visible to reads as soon as they complete but durable only once a flush that started
after them completes (fdatasync), or at once with FUA. At a crash every write not yet durable is,
block by block, lost or kept (a torn multi-block write), as the run's RNG decides. The disk outlives
the array using it: each array incarnation gets a :class:`DiskHandle`, which stops working when
its incarnation crashes, so a dead array's leftover tasks cannot touch the disk any more.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..backstore.base import Backstore, Extent

BLOCK = 512


class NodeCrashed(BaseException):
    """Raised into work of an array that has crashed (BaseException: no handler may swallow it)."""


@dataclass(slots=True)
class _Pending:
    wid: int
    offset: int
    data: bytes
    forced: bool  # FUA: survives a crash whatever happens to its neighbours


class SimDisk:
    """The hardware: current contents, durable contents, and the writes in between."""

    def __init__(self, name: str, size: int, rng: random.Random, keep_prob: float,
                 delay: Callable[[], float]) -> None:
        self.name = name
        self.size = size
        self.rng = rng
        self.keep_prob = keep_prob
        self.delay = delay
        self.cur = bytearray(size)
        self.dur = bytearray(size)
        self.mapped = bytearray(size // BLOCK)
        self.pending: list[_Pending] = []
        self.wid = 0
        self.gen = 0
        #: called with (offset, length) after every change of the current contents
        self.watchers: list[Callable[[int, int], None]] = []

    # --- what the array's store does -------------------------------------------------------

    def apply(self, offset: int, data: bytes, forced: bool) -> None:
        n = len(data)
        self.cur[offset:offset + n] = data
        first, last = offset // BLOCK, (offset + n + BLOCK - 1) // BLOCK
        self.mapped[first:last] = b"\1" * (last - first)
        self.wid += 1
        self.pending.append(_Pending(self.wid, offset, bytes(data), forced))
        for w in self.watchers:
            w(offset, n)

    def make_durable(self, upto_wid: int) -> None:
        k = 0
        for p in self.pending:
            if p.wid > upto_wid:
                break
            self.dur[p.offset:p.offset + len(p.data)] = p.data
            k += 1
        del self.pending[:k]

    def crash(self) -> tuple[int, int]:
        """Power loss: decide, block by block, what of the unsynced writes reached the medium.
        Returns (blocks kept, blocks lost)."""
        self.gen += 1
        kept = lost = 0
        for p in self.pending:
            # Disk block by disk block: a write that starts or ends mid-block has a partial first or
            # last piece, and only its own bytes may change (slicing by the write's own 512-byte
            # steps gave a short last slice that replaced a whole block and shifted the image).
            lo, end = p.offset, p.offset + len(p.data)
            while lo < end:
                hi = min(end, (lo // BLOCK + 1) * BLOCK)
                if p.forced or self.rng.random() < self.keep_prob:
                    self.dur[lo:hi] = p.data[lo - p.offset : hi - p.offset]
                    kept += 1
                else:
                    lost += 1
                lo = hi
        self.pending.clear()
        assert len(self.dur) == self.size
        self.cur[:] = self.dur
        for w in self.watchers:
            w(0, self.size)
        return kept, lost

    def tags(self, offset: int = 0, length: int | None = None) -> list[int]:
        """The first 8 bytes of every block (the workload's write tags; 0 for never written)."""
        end = self.size if length is None else offset + length
        return memoryview(self.cur)[offset:end].cast("Q")[:: BLOCK // 8].tolist()


class DiskHandle(Backstore):
    """The Backstore one array incarnation sees; dead once that incarnation crashed."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self.gen = disk.gen
        self.size = disk.size
        self.thin = True

    def _alive(self) -> None:
        if self.disk.gen != self.gen:
            raise NodeCrashed(f"{self.disk.name}: the array using this disk crashed")

    async def _io(self) -> None:
        self._alive()
        d = self.disk.delay()
        await asyncio.sleep(d)
        self._alive()

    async def read(self, offset: int, length: int) -> bytes:
        await self._io()
        return bytes(self.disk.cur[offset:offset + length])

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"{self.disk.name}: write {offset}+{len(data)} beyond {self.size}")
        await self._io()
        self.disk.apply(offset, bytes(data), fua)

    async def flush(self) -> None:
        self._alive()
        upto = self.disk.wid  # what completed before the flush started
        await self._io()
        self.disk.make_durable(upto)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))

    async def unmap(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))
        first, last = -(-offset // BLOCK), (offset + length) // BLOCK
        if last > first:
            self.disk.mapped[first:last] = bytes(last - first)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        await self._io()
        out: list[Extent] = []
        m = self.disk.mapped
        pos, end = offset, offset + length
        while pos < end:
            b = pos // BLOCK
            mapped = bool(m[b])
            stop = m.find(b"\0" if mapped else b"\1", b + 1)
            nxt = end if stop < 0 else min(end, stop * BLOCK)
            out.append(Extent(pos, nxt - pos, mapped))
            pos = nxt
        return out

    def close(self) -> None:
        """A clean shutdown syncs everything (as the sparse file store's close does)."""
        if self.disk.gen == self.gen:
            self.disk.make_durable(self.disk.wid)

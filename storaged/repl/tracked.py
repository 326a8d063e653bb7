"""An S-VOL made writable by takeover, with its written regions recorded for a reverse resync."""

from __future__ import annotations

import asyncio
from typing import Any

from ..backstore.base import Backstore, Extent


class TrackedStore(Backstore):
    """An S-VOL made writable by takeover: writes go through and their regions are recorded, so a
    reverse resync copies only what changed.

    A reverse resync first *holds* it: new writes wait, writes in flight finish (their regions are
    recorded, their data can be flushed); it then *hands over* to the volume's journaled store,
    which the held writes go to. Without that a write in flight lands after the flush, neither
    durable nor journaled, and a copy back may read what a power cut then takes away."""

    def __init__(self, inner: Backstore, mark: Any) -> None:
        self.inner = inner
        self.mark = mark
        self.size = inner.size
        self.thin = inner.thin
        self._inflight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._gate: asyncio.Event | None = None
        self._successor: Backstore | None = None

    async def hold(self) -> None:
        """Stop new writes and wait for those in flight."""
        if self._gate is None:
            self._gate = asyncio.Event()
        await self._drained.wait()

    def hand_over(self, successor: Backstore | None) -> None:
        """Let held writes go on: to ``successor`` (the journaled store), or here again (None)."""
        self._successor = successor
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def _enter(self) -> Backstore | None:
        while self._gate is not None:
            await self._gate.wait()
        if self._successor is not None:
            return self._successor
        self._inflight += 1
        self._drained.clear()
        return None

    def _leave(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._drained.set()

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        successor = await self._enter()
        if successor is not None:
            return await successor.write(offset, data, fua)
        try:
            self.mark(offset, len(data))
            await self.inner.write(offset, data, fua)
        finally:
            self._leave()

    async def flush(self) -> None:
        await self.inner.flush()

    async def unmap(self, offset: int, length: int) -> None:
        successor = await self._enter()
        if successor is not None:
            return await successor.unmap(offset, length)
        try:
            self.mark(offset, length)
            await self.inner.unmap(offset, length)
        finally:
            self._leave()

    async def write_zeroes(self, offset: int, length: int) -> None:
        successor = await self._enter()
        if successor is not None:
            return await successor.write_zeroes(offset, length)
        try:
            self.mark(offset, length)
            await self.inner.write_zeroes(offset, length)
        finally:
            self._leave()

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await self.inner.extents(offset, length)

    def close(self) -> None:
        self.inner.close()

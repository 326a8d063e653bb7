"""An S-VOL made writable by takeover, with its written regions recorded for a reverse resync."""

from __future__ import annotations

from typing import Any

from ..backstore.base import Backstore, Extent


class TrackedStore(Backstore):
    """An S-VOL made writable by takeover: writes go through and their regions are recorded, so a
    reverse resync copies only what changed."""

    def __init__(self, inner: Backstore, mark: Any) -> None:
        self.inner = inner
        self.mark = mark
        self.size = inner.size
        self.thin = inner.thin

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        self.mark(offset, len(data))
        await self.inner.write(offset, data, fua)

    async def flush(self) -> None:
        await self.inner.flush()

    async def unmap(self, offset: int, length: int) -> None:
        self.mark(offset, length)
        await self.inner.unmap(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.mark(offset, length)
        await self.inner.write_zeroes(offset, length)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await self.inner.extents(offset, length)

    def close(self) -> None:
        self.inner.close()

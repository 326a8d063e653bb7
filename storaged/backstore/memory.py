"""An in-memory store for unit tests of the SCSI layer: same semantics as the sparse file, no disk."""

from __future__ import annotations

from .base import Backstore, Extent


class MemoryBackstore(Backstore):
    """Keeps written blocks in a dict of fixed-size chunks; absent chunks are holes."""

    CHUNK = 4096

    def __init__(self, size: int, thin: bool = True) -> None:
        self.size = size
        self.thin = thin
        self._chunks: dict[int, bytearray] = {}
        self.flushes = 0

    async def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        pos = offset
        while pos < offset + length:
            idx, inner = divmod(pos, self.CHUNK)
            n = min(self.CHUNK - inner, offset + length - pos)
            chunk = self._chunks.get(idx)
            if chunk is not None:
                out[pos - offset : pos - offset + n] = chunk[inner : inner + n]
            pos += n
        return bytes(out)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        mv = memoryview(data).cast("B")
        pos = offset
        while pos < offset + len(mv):
            idx, inner = divmod(pos, self.CHUNK)
            n = min(self.CHUNK - inner, offset + len(mv) - pos)
            chunk = self._chunks.setdefault(idx, bytearray(self.CHUNK))
            chunk[inner : inner + n] = mv[pos - offset : pos - offset + n]
            pos += n
        if fua:
            self.flushes += 1

    async def flush(self) -> None:
        self.flushes += 1

    async def write_zeroes(self, offset: int, length: int) -> None:
        pos = offset
        while pos < offset + length:
            idx, inner = divmod(pos, self.CHUNK)
            n = min(self.CHUNK - inner, offset + length - pos)
            if inner == 0 and n == self.CHUNK:
                self._chunks.pop(idx, None)
            elif idx in self._chunks:
                self._chunks[idx][inner : inner + n] = bytes(n)
            pos += n

    async def unmap(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pos = offset
        end = offset + length
        while pos < end:
            idx, inner = divmod(pos, self.CHUNK)
            n = min(self.CHUNK - inner, end - pos)
            mapped = idx in self._chunks or not self.thin
            if out and out[-1].mapped == mapped:
                last = out[-1]
                out[-1] = Extent(last.offset, last.length + n, mapped)
            else:
                out.append(Extent(pos, n, mapped))
            pos += n
        return out

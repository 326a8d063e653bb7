"""The backing-store interface every logical unit reads and writes through.

It speaks bytes and byte offsets, not SCSI: a sparse file implements it today, a memory store
serves unit tests, and a remote store (a virtual volume served by a peer array) plugs in later.
Methods are coroutines so that a store may wait (fsync in a thread, a round trip to a peer)
without blocking the event loop.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


class BackstoreError(Exception):
    """An I/O failure the SCSI layer turns into MEDIUM ERROR sense."""


class BackstoreFull(BackstoreError):
    """The file system under a thin store is full (ENOSPC): SPACE ALLOCATION FAILED sense."""


class BackstoreUnavailable(BackstoreError):
    """The store cannot be reached right now (a peer link down): NOT READY sense."""


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of bytes that is either mapped (holds data) or a hole (reads as zeros)."""

    offset: int
    length: int
    mapped: bool


def first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    """Offset of the first differing byte of two equal-length buffers, or -1 if they match."""
    ma, mb = memoryview(a), memoryview(b)
    if ma == mb:
        return -1
    step = 4096
    for base in range(0, len(ma), step):
        if ma[base : base + step] != mb[base : base + step]:
            for i in range(base, min(base + step, len(ma))):
                if ma[i] != mb[i]:
                    return i
    return -1


class Backstore(abc.ABC):
    """Byte-addressed storage behind one logical unit."""

    #: capacity in bytes; a multiple of the LU's block size
    size: int
    #: True when unmapped ranges can be given back (hole punching), i.e. the LU is thin
    thin: bool = False
    @property
    def available(self) -> bool:
        """False while the store cannot be reached (TEST UNIT READY then answers NOT READY)."""
        return True

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes; holes read as zeros."""

    @abc.abstractmethod
    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Write all of ``data``; with ``fua`` it is durable when this returns."""

    async def writev(self, offset: int, buffers: list[bytes | bytearray | memoryview], fua: bool = False) -> None:
        """Write several buffers back to back (a journal entry's header and data, say)."""
        await self.write(offset, b"".join(buffers), fua)

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make every write that returned so far durable (SYNCHRONIZE CACHE)."""

    async def unmap(self, offset: int, length: int) -> None:
        """Deallocate a range so it reads as zeros (UNMAP, WRITE SAME with UNMAP)."""
        await self.write_zeroes(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read as zeros; a store may deallocate it if it is thin."""
        chunk = 1 << 20
        zeros = bytes(min(chunk, length))
        pos = offset
        while pos < offset + length:
            n = min(chunk, offset + length - pos)
            await self.write(pos, zeros[:n])
            pos += n

    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool = False) -> int:
        """Write ``data`` only if the range holds ``expected``; return -1 on success or the offset
        of the first differing byte. The caller serialises it against other writers of this
        store (a remote store runs it on the peer, under the peer's lock)."""
        current = await self.read(offset, len(expected))
        diff = first_difference(current, expected)
        if diff < 0:
            await self.write(offset, data, fua)
        return diff

    async def extents(self, offset: int, length: int) -> list[Extent]:
        """Describe which parts of a range are mapped; a thick store is mapped everywhere."""
        return [Extent(offset, length, True)]

    def close(self) -> None:
        """Release the store (file descriptors, locks)."""

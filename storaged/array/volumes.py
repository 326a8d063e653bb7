"""This array's volumes as the remote link serves them to peers.

Peer I/O goes through the logical unit, not around it: writes, zeroing and COMPARE AND WRITE use
the LU's range-tracked methods, so a peer's CAW (a peer host's ATS lock on its virtual volume) is
exactly as atomic as a local one against host writes in flight on the same blocks, and a peer's
zeroing is a write a local CAW sees whole. Read-only LUNs refuse writes, and a command device sees
the peer's writes exactly as it sees a host's (with the origin set to ``peer/initiator``).
"""

from __future__ import annotations

from ..backstore.base import Extent
from ..remote.api import RemoteError, VolumeInfo
from ..remote.protocol import Status
from ..scsi.lu import LogicalUnit
from ..scsi.sense import ScsiError


class LuVolume:
    """Adapter from :class:`LogicalUnit` to the link's :class:`storaged.remote.api.Volume`."""

    def __init__(self, lu: LogicalUnit, info: VolumeInfo) -> None:
        self.lu = lu
        self.info = info

    def _read_only(self) -> RemoteError:
        return RemoteError(Status.NOT_ALLOWED, f"LUN {self.info.lun} of {self.info.target} is read-only")

    def _writable(self) -> None:
        if self.lu.write_protected:
            raise self._read_only()

    async def read(self, offset: int, length: int) -> bytes:
        return await self.lu.backstore.read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        self._writable()
        try:
            await self.lu.store(offset, data, fua)
        except ScsiError as exc:  # write-protected while it waited for an overlapping command
            raise self._read_only() from exc

    async def flush(self) -> None:
        await self.lu.backstore.flush()

    async def unmap(self, offset: int, length: int) -> None:
        self._writable()
        try:
            await self.lu.zero(offset, length, unmap=True)
        except ScsiError as exc:  # write-protected while it waited for an overlapping command
            raise self._read_only() from exc

    async def write_zeroes(self, offset: int, length: int) -> None:
        self._writable()
        try:
            await self.lu.zero(offset, length, unmap=False)
        except ScsiError as exc:  # write-protected while it waited for an overlapping command
            raise self._read_only() from exc

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await self.lu.backstore.extents(offset, length)

    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool) -> int:
        self._writable()
        try:
            return await self.lu.compare_and_write(offset, expected, data, fua)
        except ScsiError as exc:  # write-protected while it waited for an overlapping command
            raise self._read_only() from exc

"""A virtual volume's backing store: every byte lives on a peer array's LUN (spec Fig. 3, 4).

The logical unit on top is this array's own (its NAA id, serial and reservations), as with an
array's external-volume virtualisation; only data moves over the remote link. Link failures turn
into BackstoreUnavailable, which the SCSI layer answers with NOT READY / LOGICAL UNIT
COMMUNICATION FAILURE, so a host sees a clean error in bounded time and retries.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from ..backstore.base import Backstore, Extent
from ..origin import current_origin
from ..remote.api import LinkError, VolumeInfo
from ..remote.link import PeerLink
from ..remote.protocol import backstore_error

T = TypeVar("T")


class RemoteBackstore(Backstore):
    """Forwards each backstore call to one LUN of a peer over its PeerLink."""

    def __init__(self, link: PeerLink, info: VolumeInfo) -> None:
        self.link = link
        self.info = info
        self.size = info.size
        self.thin = info.thin
        self.target = info.target
        self.lun = info.lun

    @property
    def available(self) -> bool:
        return self.link.connected

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except LinkError as exc:
            raise backstore_error(exc) from exc

    async def read(self, offset: int, length: int) -> bytes:
        return await self._call(self.link.read(self.target, self.lun, offset, length, origin=current_origin()))

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        await self._call(self.link.write(self.target, self.lun, offset, data, fua=fua, origin=current_origin()))

    async def flush(self) -> None:
        await self._call(self.link.flush(self.target, self.lun, origin=current_origin()))

    async def unmap(self, offset: int, length: int) -> None:
        await self._call(self.link.unmap(self.target, self.lun, offset, length, origin=current_origin()))

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._call(self.link.write_zeroes(self.target, self.lun, offset, length, origin=current_origin()))

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await self._call(self.link.extents(self.target, self.lun, offset, length, origin=current_origin()))

    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool = False) -> int:
        # Runs on the peer under its LU's lock, so it is atomic against the peer's own hosts too.
        return await self._call(self.link.compare_and_write(self.target, self.lun, offset, expected, data, fua=fua,
                                                            origin=current_origin()))

"""What the remote link serves, and the errors it reports, independent of the wire format.

The link moves block I/O on a peer's volumes (the spec's second write request section and read
request section) and JSON calls for control. The array implements :class:`LinkHandler`; the link
server calls it for every request a peer sends. The client side (:class:`storaged.remote.link.PeerLink`)
raises the errors below, which the SCSI layer maps to sense data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..backstore.base import Extent


class LinkError(Exception):
    """Base of every remote-link failure."""


class LinkDown(LinkError):
    """No authenticated connection to the peer right now (or it dropped with the request in flight)."""


class LinkTimeout(LinkError):
    """The peer did not answer within the request's timeout."""


class RemoteError(LinkError):
    """The peer answered with an error status; ``status`` is a :class:`storaged.remote.protocol.Status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A peer volume's geometry and kind, as OPEN_VOLUME reports it."""

    target: str
    lun: int
    size: int
    block_size: int
    thin: bool
    command_device: bool
    naa: str  # hex

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "lun": self.lun, "size": self.size, "block_size": self.block_size,
                "thin": self.thin, "command_device": self.command_device, "naa": self.naa}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeInfo:
        return cls(str(d["target"]), int(d["lun"]), int(d["size"]), int(d["block_size"]), bool(d["thin"]),
                   bool(d["command_device"]), str(d["naa"]))


class Volume(Protocol):
    """One volume as the link serves it: the array routes these through the LU, so locks,
    command-device interception and (later) journaling apply to peer I/O as to host I/O."""

    info: VolumeInfo

    async def read(self, offset: int, length: int) -> bytes: ...
    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None: ...
    async def flush(self) -> None: ...
    async def unmap(self, offset: int, length: int) -> None: ...
    async def write_zeroes(self, offset: int, length: int) -> None: ...
    async def extents(self, offset: int, length: int) -> list[Extent]: ...
    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool) -> int: ...


class LinkHandler(Protocol):
    """Implemented by the array: resolves volumes and answers control calls from a peer."""

    def volume(self, peer: str, target: str, lun: int) -> Volume | None:
        """The volume (target "" = the array's first target), or None if there is no such LUN."""

    async def call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A control call; raise RemoteError(status, message) to answer with an error."""

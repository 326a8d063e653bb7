"""What both TCP protocols of the daemon (iSCSI and the remote link) do with their sockets.

Responses are small and many: Nagle would hold them back, and a send() per response would cost a
syscall each. So sockets get TCP_NODELAY, and output is batched per event-loop iteration: all the
buffers queued while handling one read go out with a single ``writelines``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview


def tune_socket(transport: asyncio.BaseTransport) -> str:
    """Set TCP_NODELAY on the transport's socket; return the peer as ``host:port``."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


class BatchedWriter:
    """Collects output and sends it once per loop iteration (one writelines, no joining copy)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.WriteTransport | None = None
        self._outbox: list[Buffer] = []
        self._scheduled = False

    def queue(self, buffers: Iterable[Buffer]) -> None:
        self._outbox.extend(buffers)
        if self._outbox and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        out, self._outbox = self._outbox, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def discard(self) -> None:
        self._outbox.clear()

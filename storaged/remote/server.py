"""Server end of the remote link: accepts peer arrays, authenticates them, serves their requests.

Bounds what a peer that has not authenticated may cost (the number of such connections, the
handshake's time; frame size is the reader's), runs each request as a task with at most
``max_inflight_per_connection`` at once (the rest wait in the socket), and pings idle peers.
What a request does is :func:`~storaged.remote.dispatch.dispatch`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .api import LinkHandler, RemoteError
from .auth import ServerHandshake
from .connection import LOGGER, FrameConnection, RateLimitedWarning, op_name, status_name
from .dispatch import dispatch
from .protocol import (
    MAX_VERSION,
    MIN_VERSION,
    Frame,
    FrameType,
    ProtocolError,
    Status,
    encode_error,
    encode_frame,
    encode_response,
    error_message,
    status_for_exception,
)

log = logging.getLogger(LOGGER)


class _ServerConnection(FrameConnection):
    def __init__(self, server: LinkServer) -> None:
        super().__init__()
        self.server = server
        self.hs = ServerHandshake(server.array_name, server.array_uuid, server.secrets, versions=server.versions)
        self.peer = ""  # the authenticated array name
        self.tasks: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.max_inflight_seen = 0
        self._hs_timer: asyncio.TimerHandle | None = None
        self._admitted = False  # holds one of the server's slots for unauthenticated connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.server.admit(self.address):
            self.closing = True
            self.close_reason = "refused: too many unauthenticated connections"
            transport.abort()  # type: ignore[attr-defined]
            return
        self._admitted = True
        self.server.connections.add(self)
        self._hs_timer = self.loop.call_later(self.server.handshake_timeout, self._handshake_expired)
        log.debug("remote link: connection from %s", self.address)

    def _release_slot(self) -> None:
        if self._admitted:
            self._admitted = False
            self.server.unauthenticated -= 1

    def on_lost(self) -> None:
        self._release_slot()
        self.server.connections.discard(self)
        if self._hs_timer is not None:
            self._hs_timer.cancel()
        if self.peer:
            log.info("remote link: %s (%s) disconnected: %s", self.peer, self.address, self.close_reason)

    def log_bad_frame(self, e: ProtocolError) -> None:
        if self.hs.done:
            super().log_bad_frame(e)
        else:  # anyone can connect and send junk: don't let them fill the log
            self.server.preauth_warning("remote link: bad frame from %s before authentication: %s", self.address, e)

    def _handshake_expired(self) -> None:
        if not self.hs.done and not self.closing:
            log.warning("remote link: %s (claiming %r) did not authenticate within %.0fs", self.address,
                        self.hs.peer_name, self.server.handshake_timeout)
            self.fail(Status.TIMEOUT, "handshake timeout")

    # --- backpressure: at most max_inflight requests run; the rest wait in the socket --------

    def hold(self) -> bool:
        if self.hs.done and len(self.tasks) >= self.server.max_inflight:
            self.pause("inflight")
            return True
        return False

    def drained(self) -> None:
        self.resume("inflight")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.paused("inflight") and not self.closing:
            self.process()

    # --- frames ----------------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        if not self.hs.done:
            self._handshake(frame)
            return
        t = frame.type
        if t == FrameType.REQUEST:
            self.requests += 1
            task = self.loop.create_task(self._serve(frame))
            self.tasks.add(task)
            self.max_inflight_seen = max(self.max_inflight_seen, len(self.tasks))
            task.add_done_callback(self._task_done)
        elif t == FrameType.PING:
            self.send(encode_frame(FrameType.PONG, request_id=frame.request_id, payload=frame.payload,
                                   version=self.version))
        elif t == FrameType.PONG:
            pass
        elif t == FrameType.ERROR:
            if frame.status != Status.OK:
                log.warning("remote link: %s (%s) reported %s: %s", self.peer, self.address,
                            status_name(frame.status), error_message(frame.payload))
            self.close("peer said goodbye" if frame.status == Status.OK else "peer reported an error")
        else:
            self.fail(Status.WRONG_STATE, f"unexpected {frame.type.name} frame")

    def _handshake(self, frame: Frame) -> None:
        e = self.step_handshake(frame)
        if e is not None:
            if e.status == Status.AUTH_FAILED:
                log.warning("remote link: authentication failed for %s claiming to be array %r: %s",
                            self.address, e.peer_name, e.message)
            else:
                log.warning("remote link: handshake with %s (claiming %r) failed: %s", self.address,
                            e.peer_name, e.message)
            return
        if self.hs.done:
            self.peer = self.log_fields["peer"] = self.hs.peer_name
            self._release_slot()
            if self._hs_timer is not None:
                self._hs_timer.cancel()
            log.info("remote link: array %r (%s) authenticated, protocol v%d", self.peer, self.address,
                     self.version)

    async def _serve(self, frame: Frame) -> None:
        try:
            payload = await dispatch(self.server.handler, self.peer, frame)
            status = Status.OK
        except Exception as e:  # every failure becomes a status; the connection lives on
            status = status_for_exception(e)
            if status == Status.INTERNAL and not isinstance(e, RemoteError):
                log.exception("remote link: %s request %s from %s failed", op_name(frame.opcode),
                              frame.request_id, self.peer)
            payload = (getattr(e, "message", None) or str(e) or type(e).__name__).encode()[:1024]
        if not self.closing:
            self.send(encode_response(frame.opcode, frame.request_id, status, payload, version=self.version))

    def status(self) -> dict[str, Any]:
        return {"peer": self.peer, "address": self.address, "authenticated": self.hs.done,
                "inflight": len(self.tasks), "max_inflight_seen": self.max_inflight_seen,
                "requests": self.requests, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "paused": sorted(self._pause_reasons)}


class LinkServer:
    """Accepts peer arrays, authenticates them, and serves their requests through ``handler``.

    At most ``max_unauthenticated`` connections may be in the handshake at once (each costs a few
    KiB: handshake frames are capped, see :class:`~storaged.remote.reader.FrameReader`); more are
    closed as soon as they are accepted, and logged at most once per ``REFUSAL_LOG_INTERVAL``.
    """

    REFUSAL_LOG_INTERVAL = 10.0

    def __init__(self, array_name: str, array_uuid: str, secrets: dict[str, str], handler: LinkHandler, *,
                 max_inflight_per_connection: int = 64, keepalive: float = 5.0, handshake_timeout: float = 10.0,
                 max_unauthenticated: int = 16, versions: tuple[int, int] = (MIN_VERSION, MAX_VERSION)) -> None:
        self.array_name = array_name
        self.array_uuid = array_uuid
        self.secrets = secrets  # peer array name -> shared secret; read at each handshake
        self.handler = handler
        self.max_inflight = max_inflight_per_connection
        self.keepalive = keepalive
        self.handshake_timeout = handshake_timeout
        self.max_unauthenticated = max_unauthenticated
        self.versions = versions
        self.connections: set[_ServerConnection] = set()
        #: connections in the handshake now, and connections refused because there were too many
        self.unauthenticated = 0
        self.refused = 0
        self._unlogged_refusals = 0
        self._last_refusal_log = -float("inf")
        self.preauth_warning = RateLimitedWarning(self.REFUSAL_LOG_INTERVAL)
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; port 0 picks a free port. Returns the bound address."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), host, port,
                                                reuse_address=True, backlog=64)
        self._ticker = asyncio.create_task(self._keepalive_loop(), name="remote-link-keepalive")
        bound = self._server.sockets[0].getsockname()
        log.info("remote link: array %r listening on %s:%d", self.array_name, bound[0], bound[1])
        return bound[0], bound[1]

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, let running requests finish (up to ``grace`` s), say GOAWAY, close."""
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        conns = list(self.connections)
        for c in conns:
            c.pause("shutdown")
        running = [t for c in conns for t in c.tasks]
        if running:
            _done, pending = await asyncio.wait(running, timeout=grace)
            for t in pending:
                t.cancel()
        for c in conns:
            c.send(encode_error(Status.OK, "array shutting down", version=c.version))
            c.close("server shutting down")
        if conns:
            await asyncio.wait([c.lost for c in conns], timeout=grace)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def admit(self, address: str) -> bool:
        """Take a slot for a new, unauthenticated connection, or refuse it (rate-limited log)."""
        if self.unauthenticated < self.max_unauthenticated:
            self.unauthenticated += 1
            return True
        self.refused += 1
        self._unlogged_refusals += 1
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= self.REFUSAL_LOG_INTERVAL:
            log.warning("remote link: refused %d connection(s) (latest from %s): %d connections are already "
                        "in the handshake (max_unauthenticated)", self._unlogged_refusals, address,
                        self.unauthenticated)
            self._last_refusal_log = now
            self._unlogged_refusals = 0
        return False

    def status(self) -> list[dict[str, Any]]:
        """One entry per connection (authenticated or not)."""
        return [c.status() for c in self.connections]

    async def _keepalive_loop(self) -> None:
        """Ping idle peers and drop those silent for 3 keepalive periods (half-open connections)."""
        while True:
            await asyncio.sleep(self.keepalive)
            now = asyncio.get_running_loop().time()
            for c in list(self.connections):
                if not c.hs.done or c.closing:
                    continue
                idle = now - c.last_rx
                if c.paused("inflight") or c.paused("write"):
                    continue  # we are the ones not reading; silence proves nothing
                if idle > 3 * self.keepalive:
                    log.warning("remote link: %s (%s) silent for %.0fs, closing", c.peer, c.address, idle)
                    c.fail(Status.TIMEOUT, "keepalive timeout")
                elif idle >= self.keepalive:
                    c.send(encode_frame(FrameType.PING, version=c.version))

"""asyncio side of the remote link: the server that serves our volumes to a peer, and the
client (:class:`PeerLink`) that reaches a peer's volumes.

Frames are decoded by the sans-IO :class:`~storaged.remote.reader.FrameReader`; this module only
moves bytes, runs requests as tasks, applies backpressure, bounds what peers that have not
authenticated may cost (frame size, number of connections, time), seals every frame after the
handshake with its tag, and keeps the client connected (reconnect with backoff, keepalive). Connections are ``asyncio.BufferedProtocol`` so large READ
and WRITE payloads are received straight into the buffer handed to the caller or the volume.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..backstore.base import Extent
from ..logfmt import LOG_FIELDS, with_log_fields
from ..netio import BatchedWriter, tune_socket
from ..origin import ORIGIN, current_origin, via_peer
from .api import LinkDown, LinkError, LinkHandler, LinkTimeout, RemoteError, Volume, VolumeInfo
from .auth import ClientHandshake, HandshakeError, ServerHandshake
from .integrity import FrameMac
from .protocol import (
    DATA_OPCODES,
    FLAG_FUA,
    MAX_IO,
    MAX_VERSION,
    MIN_VERSION,
    Buffer,
    Frame,
    FrameType,
    Opcode,
    ProtocolError,
    Status,
    decode_caw_result,
    decode_data_request,
    decode_extents,
    decode_json,
    encode_caw_result,
    encode_data_header,
    encode_error,
    encode_extents,
    encode_frame,
    encode_json,
    encode_response,
    error_message,
    status_for_exception,
)
from .reader import FrameReader

log = logging.getLogger(__name__)

Listener = Callable[[bool], Any]


class RateLimitedWarning:
    """Logs a WARNING at most once per ``interval`` seconds; the next one counts those dropped."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._dropped = 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._dropped += 1
            return
        if self._dropped:
            msg, args = msg + " (and %d more not logged)", (*args, self._dropped)
        log.warning(msg, *args)
        self._last = now
        self._dropped = 0


class _FrameConnection(asyncio.BufferedProtocol):
    """One TCP connection as a stream of frames; subclasses say what the frames mean."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = FrameReader.handshake()
        #: seals every frame we send once the handshake is done
        self.tx_mac: FrameMac | None = None
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.version = MAX_VERSION
        self.last_rx = self.loop.time()
        self.bytes_in = 0
        self.bytes_out = 0
        self.closing = False
        self.close_reason = ""
        self.lost: asyncio.Future[None] = self.loop.create_future()
        #: buffers queued during this loop iteration, sent with one writelines()
        self.out = BatchedWriter(self.loop)
        self._pause_reasons: set[str] = set()
        self._process_scheduled = False
        #: the fields this connection's log lines carry (storaged.logfmt): the peer, once known
        self.log_fields: dict[str, Any] = {}

    # --- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.out.transport = transport  # type: ignore[assignment]
        self.address = tune_socket(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        self.last_rx = self.loop.time()
        self.reader.buffer_updated(nbytes)
        if self.reader.payload_complete:
            # the transport still holds the view it read into: finish on the next iteration, when
            # it is gone, so the payload becomes the caller's bytes without a copy
            if not self._process_scheduled:
                self._process_scheduled = True
                self.loop.call_soon(self._deferred_process)
        else:
            self.process()

    def _deferred_process(self) -> None:
        self._process_scheduled = False
        self.process()

    def eof_received(self) -> bool | None:
        return None  # half-closed is closed: let the transport close

    @with_log_fields
    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed by the peer"
        self.out.discard()
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost()

    def pause_writing(self) -> None:
        # the peer is not reading what we send: stop reading what it sends too
        self.pause("write")

    def resume_writing(self) -> None:
        self.resume("write")

    # --- framing ---------------------------------------------------------------------------

    @with_log_fields
    def process(self) -> None:
        """Decode and handle buffered frames until more bytes are needed or ``hold()`` says stop."""
        while not self.closing:
            if self.hold():
                return
            try:
                frame = self.reader.next_frame()
            except ProtocolError as e:
                self.log_bad_frame(e)
                self.fail(e.status, f"bad frame: {e}")
                return
            if frame is None:
                self.drained()
                return
            self.frame_received(frame)

    def hold(self) -> bool:
        return False

    def log_bad_frame(self, e: ProtocolError) -> None:
        log.warning("remote link: bad frame from %s: %s", self.address, e)

    def drained(self) -> None:
        """Every buffered frame is handled."""

    def frame_received(self, frame: Frame) -> None:
        raise NotImplementedError

    def on_lost(self) -> None:
        """The connection is gone (after ``close`` or a network failure)."""

    # --- output ----------------------------------------------------------------------------

    def send(self, buffers: Sequence[Buffer]) -> None:
        """Queue one encoded frame (``[header, *payload parts]``), sealed after the handshake."""
        if self.closing or not buffers:
            return
        if self.tx_mac is not None:
            buffers = self.tx_mac.seal(buffers)
        self.bytes_out += sum(len(b) for b in buffers)
        self.out.queue(buffers)

    def pause(self, reason: str) -> None:
        if not self._pause_reasons and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if not self._pause_reasons and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def paused(self, reason: str) -> bool:
        return reason in self._pause_reasons

    def step_handshake(self, frame: Frame) -> HandshakeError | None:
        """Feed a handshake frame to this side's machine and send its answer. On failure the
        connection is closed (with an ERROR frame unless the peer sent one) and the error returned."""
        try:
            out = self.hs.receive(frame)  # type: ignore[attr-defined]
        except HandshakeError as e:
            if frame.type == FrameType.ERROR:
                self.close(e.message)
            else:
                self.fail(e.status, e.message)
            return e
        if self.hs.version is not None:  # type: ignore[attr-defined]
            self.version = self.reader.version = self.hs.version  # type: ignore[attr-defined]
        self.send(out)  # the last handshake frame goes out untagged: the proofs cover it
        if self.hs.done:  # type: ignore[attr-defined]
            tx, rx = self.hs.session_keys()  # type: ignore[attr-defined]
            self.tx_mac = FrameMac(tx)
            self.reader.authenticated(self.version, FrameMac(rx))
        return None

    def fail(self, status: int, message: str) -> None:
        """Tell the peer why (ERROR frame), then close."""
        if self.closing:
            return
        self.send(encode_error(status, message, version=self.version))
        self.close(message)

    def close(self, reason: str) -> None:
        if self.closing:
            return
        self.close_reason = reason
        self.out.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()


# =============================================================================================
# server
# =============================================================================================


class _ServerConnection(_FrameConnection):
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
                            _status_name(frame.status), error_message(frame.payload))
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
            payload = await self._dispatch(frame)
            status = Status.OK
        except Exception as e:  # every failure becomes a status; the connection lives on
            status = status_for_exception(e)
            if status == Status.INTERNAL and not isinstance(e, RemoteError):
                log.exception("remote link: %s request %s from %s failed", _op_name(frame.opcode),
                              frame.request_id, self.peer)
            payload = (getattr(e, "message", None) or str(e) or type(e).__name__).encode()[:1024]
        if not self.closing:
            self.send(encode_response(frame.opcode, frame.request_id, status, payload, version=self.version))

    def _volume(self, target: str, lun: int) -> Volume:
        vol = self.server.handler.volume(self.peer, target, lun)
        if vol is None:
            raise RemoteError(Status.NOT_FOUND, f"no volume {target!r} LUN {lun}")
        return vol

    async def _dispatch(self, frame: Frame) -> Buffer | Sequence[Buffer]:
        """Run one request in this task; ORIGIN is set here so only this request sees it."""
        op = frame.opcode
        if op in DATA_OPCODES:
            req = decode_data_request(op, frame.payload)
            ORIGIN.set(via_peer(self.peer, req.origin))
            vol = self._volume(req.target, req.lun)
            if op != Opcode.FLUSH and req.offset + req.length > vol.info.size:
                raise RemoteError(Status.BAD_REQUEST, f"range {req.offset}+{req.length} beyond the end of "
                                  f"the volume ({vol.info.size} bytes)")
            fua = bool(frame.flags & FLAG_FUA)
            if op == Opcode.READ:
                data = await vol.read(req.offset, req.length)
                if len(data) != req.length:
                    raise RemoteError(Status.INTERNAL, f"volume returned {len(data)} of {req.length} bytes")
                return data
            if op == Opcode.WRITE:
                await vol.write(req.offset, req.data, fua)
            elif op == Opcode.FLUSH:
                await vol.flush()
            elif op == Opcode.UNMAP:
                await vol.unmap(req.offset, req.length)
            elif op == Opcode.WRITE_ZEROES:
                await vol.write_zeroes(req.offset, req.length)
            elif op == Opcode.EXTENTS:
                return encode_extents(await vol.extents(req.offset, req.length))
            elif op == Opcode.COMPARE_AND_WRITE:
                return encode_caw_result(await vol.compare_and_write(req.offset, req.expected, req.new_data, fua))
            return b""
        if op == Opcode.OPEN_VOLUME:
            body = decode_json(frame.payload)
            target, lun = body.get("target"), body.get("lun")
            if not isinstance(target, str) or not isinstance(lun, int) or isinstance(lun, bool):
                raise RemoteError(Status.BAD_REQUEST, "OPEN_VOLUME needs {target: str, lun: int}")
            ORIGIN.set(via_peer(self.peer, str(body.get("origin") or "")))
            return encode_json(self._volume(target, lun).info.to_dict())
        if op == Opcode.CALL:
            body = decode_json(frame.payload)
            method, params, origin = body.get("method"), body.get("params", {}), body.get("origin", "")
            if not isinstance(method, str) or not isinstance(params, dict) or not isinstance(origin, str):
                raise RemoteError(Status.BAD_REQUEST, "CALL needs {method: str, params: object}")
            ORIGIN.set(via_peer(self.peer, origin))
            result = await self.server.handler.call(self.peer, method, params)
            if not isinstance(result, dict):
                raise RemoteError(Status.INTERNAL, f"{method} returned {type(result).__name__}, not an object")
            return encode_json(result)
        raise RemoteError(Status.BAD_REQUEST, f"unknown opcode {op}")

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


# =============================================================================================
# client
# =============================================================================================


class _ClientConnection(_FrameConnection):
    def __init__(self, link: PeerLink, hs: ClientHandshake) -> None:
        super().__init__()
        self.link = link
        self.hs = hs
        self.log_fields["peer"] = link.peer_name
        self.pending: dict[int, asyncio.Future[Frame]] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ping_id = 0
        self.ping_sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.send(self.hs.hello())

    def frame_received(self, frame: Frame) -> None:
        if not self.hs.done:
            e = self.step_handshake(frame)
            if e is not None:
                self._set_ready(e)
                return
            if self.hs.done:
                self._set_ready(None)
            return
        t = frame.type
        if t == FrameType.RESPONSE:
            fut = self.pending.pop(frame.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif t == FrameType.PING:
            self.send(encode_frame(FrameType.PONG, request_id=frame.request_id, payload=frame.payload,
                                   version=self.version))
        elif t == FrameType.PONG:
            if frame.request_id == self.ping_id and self.ping_sent:
                self.link._rtt_ms = (self.loop.time() - self.ping_sent) * 1000.0
                self.ping_sent = 0.0
        elif t == FrameType.ERROR:
            if frame.status == Status.OK:
                self.close(f"peer closed the link: {error_message(frame.payload)}")
            else:
                self.close(f"peer error {_status_name(frame.status)}: {error_message(frame.payload)}")
        else:
            self.fail(Status.WRONG_STATE, f"unexpected {frame.type.name} frame")

    def _set_ready(self, exc: BaseException | None) -> None:
        if self.ready.done():
            return
        if exc is None:
            self.ready.set_result(None)
        else:
            self.ready.set_exception(exc)
            self.ready.exception()  # whoever waited may have timed out: never "never retrieved"

    def on_lost(self) -> None:
        self._set_ready(LinkDown(f"link to {self.link.peer_name}: {self.close_reason}"))
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(LinkDown(f"link to {self.link.peer_name} went down: {self.close_reason}"))


class PeerLink:
    """The client end of the link to one peer array: keeps a connection up and sends requests.

    Requests fail at once with LinkDown while there is no connection (they are never queued),
    with LinkTimeout when no answer comes within their timeout, and with RemoteError when the
    peer answers an error status.
    """

    def __init__(self, local_name: str, local_uuid: str, peer_name: str, host: str, port: int, secret: str, *,
                 io_timeout: float = 10.0, connect_timeout: float = 5.0, keepalive: float = 2.0,
                 keepalive_timeout: float = 6.0, max_inflight: int = 64, backoff_initial: float = 0.1,
                 backoff_max: float = 5.0, versions: tuple[int, int] = (MIN_VERSION, MAX_VERSION)) -> None:
        self.local_name = local_name
        self.local_uuid = local_uuid
        self.peer_name = peer_name
        self.host = host
        self.port = port
        self.secret = secret
        self.io_timeout = io_timeout
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.max_inflight = max_inflight
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.versions = versions
        self.peer_uuid = ""
        self.version: int | None = None
        self._conn: _ClientConnection | None = None
        self._sem: asyncio.Semaphore | None = None
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._up = asyncio.Event()
        self._listeners: list[Listener] = []
        self._listener_tasks: set[asyncio.Task[Any]] = set()
        self._state = "down"
        self._since = time.time()
        self._rtt_ms: float | None = None
        self._reconnects = 0
        self._ever_up = False
        self._last_error: str | None = None
        self._inflight = 0
        self._requests = 0
        self._bytes_in = 0  # of closed connections; live ones add theirs in status()
        self._bytes_out = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background connect loop (call from a running event loop; not a coroutine)."""
        if self._task is None:
            self._closed = False
            self._sem = asyncio.Semaphore(self.max_inflight)
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{self.peer_name}")

    async def close(self) -> None:
        """Stop reconnecting, say GOAWAY, close; in-flight requests fail with LinkDown."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            conn.send(encode_error(Status.OK, "closing", version=conn.version))
            conn.close("link closed locally")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if conn is not None and not conn.lost.done():
            await asyncio.wait([conn.lost], timeout=1.0)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closing

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once the link is up; raises LinkTimeout (with the last error) otherwise."""
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    await self._up.wait()
                    if not self.connected:
                        await asyncio.sleep(0.01)  # up was set but the connection is already closing
        except TimeoutError:
            raise LinkTimeout(f"link to {self.peer_name} not up after {timeout}s"
                              f"{f': {self._last_error}' if self._last_error else ''}") from None

    def add_listener(self, callback: Listener) -> None:
        """``callback(up)`` runs on each up/down change; a coroutine result is run as a task."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        self._listeners.remove(callback)

    def status(self) -> dict[str, Any]:
        conn = self._conn
        return {
            "peer": self.peer_name,
            "address": f"{self.host}:{self.port}",
            "state": self._state,
            "since": self._since,
            "rtt_ms": None if self._rtt_ms is None else round(self._rtt_ms, 3),
            "reconnects": self._reconnects,
            "last_error": self._last_error,
            "inflight": self._inflight,
            "requests": self._requests,
            "bytes_in": self._bytes_in + (conn.bytes_in if conn else 0),
            "bytes_out": self._bytes_out + (conn.bytes_out if conn else 0),
            "version": self.version,
        }

    # --- connect loop ----------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        was_up = self._state == "up"
        self._state = state
        self._since = time.time()
        if state == "up":
            self._up.set()
            self._notify(True)
        elif was_up:
            self._up.clear()
            self._notify(False)

    def _notify(self, up: bool) -> None:
        for cb in list(self._listeners):
            try:
                result = cb(up)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_done)
            except Exception:
                log.exception("remote link %s: listener failed", self.peer_name)

    def _listener_done(self, task: asyncio.Task[Any]) -> None:
        self._listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("remote link %s: listener failed", self.peer_name, exc_info=task.exception())

    async def _run(self) -> None:
        LOG_FIELDS.set({"peer": self.peer_name})  # this task's own context: its lines name the peer
        delay = self.backoff_initial
        logged_error: str | None = None
        try:
            while not self._closed:
                self._set_state("connecting")
                try:
                    conn = await self._connect()
                except (OSError, LinkError, HandshakeError, TimeoutError) as e:
                    err = _describe(e)
                    self._last_error = err
                    self._set_state("down")
                    if err != logged_error:
                        level = logging.WARNING if isinstance(e, HandshakeError) else logging.INFO
                        log.log(level, "remote link %s (%s:%d): cannot connect: %s", self.peer_name, self.host,
                                self.port, err)
                        logged_error = err
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_initial
                logged_error = None
                if self._ever_up:
                    self._reconnects += 1
                self._ever_up = True
                self._conn = conn
                self.version = conn.version
                self.peer_uuid = conn.hs.peer_uuid
                log.info("remote link %s (%s:%d) up, protocol v%d", self.peer_name, self.host, self.port,
                         conn.version)
                self._set_state("up")
                ka = asyncio.get_running_loop().create_task(self._keepalive(conn))
                try:
                    await asyncio.shield(conn.lost)
                finally:
                    ka.cancel()
                    self._conn = None
                    self._bytes_in += conn.bytes_in
                    self._bytes_out += conn.bytes_out
                self._last_error = conn.close_reason
                if not self._closed:
                    log.warning("remote link %s down: %s", self.peer_name, conn.close_reason)
                self._set_state("down")
                if not self._closed:
                    await asyncio.sleep(random.uniform(self.backoff_initial / 2, self.backoff_initial))
        finally:
            last = self._conn
            if last is not None:
                last.close("link closed locally")
                self._conn = None
            self._set_state("down")

    async def _connect(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        hs = ClientHandshake(self.local_name, self.local_uuid, self.peer_name, self.secret, versions=self.versions)
        conn: _ClientConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, conn = await loop.create_connection(lambda: _ClientConnection(self, hs),
                                                                self.host, self.port)
                await conn.ready
        except BaseException:
            if conn is not None:
                conn.close("handshake failed")
            raise
        return conn

    async def _keepalive(self, conn: _ClientConnection) -> None:
        """PING every ``keepalive`` s; no frame for ``keepalive_timeout`` s means the link is dead."""
        loop = asyncio.get_running_loop()
        tick = min(self.keepalive, self.keepalive_timeout / 2)
        last_ping = -float("inf")
        while not conn.closing:
            now = loop.time()
            if now - conn.last_rx > self.keepalive_timeout:
                conn.close(f"no frame from the peer for {self.keepalive_timeout:g}s (keepalive timeout)")
                return
            if now - last_ping >= self.keepalive:
                last_ping = now
                conn.ping_id = next(self._ids)
                conn.ping_sent = now
                conn.send(encode_frame(FrameType.PING, request_id=conn.ping_id, version=conn.version))
            await asyncio.sleep(tick)

    # --- requests --------------------------------------------------------------------------

    async def _request(self, opcode: Opcode, payload: Sequence[Buffer], *, flags: int = 0,
                       timeout: float | None = None) -> Frame:
        conn = self._conn
        if conn is None or conn.closing or self._sem is None:
            raise LinkDown(f"link to {self.peer_name} is down"
                           f"{f' ({self._last_error})' if self._last_error else ''}")
        timeout = self.io_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                async with self._sem:
                    conn = self._conn
                    if conn is None or conn.closing:
                        raise LinkDown(f"link to {self.peer_name} went down")
                    rid = next(self._ids)
                    fut: asyncio.Future[Frame] = conn.loop.create_future()
                    conn.pending[rid] = fut
                    self._inflight += 1
                    self._requests += 1
                    try:
                        conn.send(encode_frame(FrameType.REQUEST, opcode=opcode, flags=flags, request_id=rid,
                                               payload=payload, version=conn.version))
                        frame = await fut
                    finally:
                        self._inflight -= 1
                        conn.pending.pop(rid, None)
        except TimeoutError:
            raise LinkTimeout(f"{opcode.name} to {self.peer_name}: no answer within {timeout:g}s") from None
        if frame.status != Status.OK:
            raise RemoteError(frame.status, error_message(frame.payload) or _status_name(frame.status))
        return frame

    async def _data(self, opcode: Opcode, target: str, lun: int, offset: int, length: int, origin: str | None,
                    data: Sequence[Buffer] = (), flags: int = 0) -> Frame:
        head = encode_data_header(target, lun, current_origin() if origin is None else origin, offset, length)
        return await self._request(opcode, [head, *data], flags=flags)

    async def open_volume(self, target: str, lun: int) -> VolumeInfo:
        frame = await self._request(Opcode.OPEN_VOLUME, [encode_json({"target": target, "lun": lun})])
        try:
            return VolumeInfo.from_dict(decode_json(frame.payload))
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(Status.INTERNAL, f"bad OPEN_VOLUME answer: {e}") from None

    async def read(self, target: str, lun: int, offset: int, length: int, origin: str | None = None) -> bytes:
        if length > MAX_IO:
            origin = current_origin() if origin is None else origin
            parts = await asyncio.gather(*(self.read(target, lun, offset + pos, min(MAX_IO, length - pos), origin)
                                           for pos in range(0, length, MAX_IO)))
            return b"".join(parts)
        frame = await self._data(Opcode.READ, target, lun, offset, length, origin)
        if len(frame.payload) != length:
            raise RemoteError(Status.INTERNAL, f"READ answered {len(frame.payload)} of {length} bytes")
        return frame.payload

    async def write(self, target: str, lun: int, offset: int, data: bytes | bytearray | memoryview,
                    fua: bool = False, origin: str | None = None) -> None:
        mv = memoryview(data).cast("B")
        if len(mv) > MAX_IO:
            origin = current_origin() if origin is None else origin
            await asyncio.gather(*(self.write(target, lun, offset + pos, mv[pos : pos + MAX_IO], fua, origin)
                                   for pos in range(0, len(mv), MAX_IO)))
            return
        await self._data(Opcode.WRITE, target, lun, offset, len(mv), origin, [mv], FLAG_FUA if fua else 0)

    async def flush(self, target: str, lun: int, origin: str | None = None) -> None:
        await self._data(Opcode.FLUSH, target, lun, 0, 0, origin)

    async def unmap(self, target: str, lun: int, offset: int, length: int, origin: str | None = None) -> None:
        await self._data(Opcode.UNMAP, target, lun, offset, length, origin)

    async def write_zeroes(self, target: str, lun: int, offset: int, length: int, origin: str | None = None) -> None:
        await self._data(Opcode.WRITE_ZEROES, target, lun, offset, length, origin)

    async def extents(self, target: str, lun: int, offset: int, length: int,
                      origin: str | None = None) -> list[Extent]:
        frame = await self._data(Opcode.EXTENTS, target, lun, offset, length, origin)
        try:
            return decode_extents(frame.payload)
        except ProtocolError as e:
            raise RemoteError(Status.INTERNAL, f"bad EXTENTS answer: {e}") from None

    async def compare_and_write(self, target: str, lun: int, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool = False,
                                origin: str | None = None) -> int:
        """-1 if the range held ``expected`` and now holds ``data``, else the first differing offset."""
        e, d = memoryview(expected).cast("B"), memoryview(data).cast("B")
        if len(e) != len(d):
            raise ValueError("expected and data must be the same length")
        frame = await self._data(Opcode.COMPARE_AND_WRITE, target, lun, offset, len(e), origin, [e, d],
                                 FLAG_FUA if fua else 0)
        try:
            return decode_caw_result(frame.payload)
        except ProtocolError as err:
            raise RemoteError(Status.INTERNAL, f"bad COMPARE_AND_WRITE answer: {err}") from None

    async def call(self, method: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A control call answered by the peer's ``LinkHandler.call`` (origin: the calling task's)."""
        body = encode_json({"method": method, "params": params, "origin": current_origin()})
        frame = await self._request(Opcode.CALL, [body], timeout=timeout)
        try:
            return decode_json(frame.payload)
        except ProtocolError as e:
            raise RemoteError(Status.INTERNAL, f"bad CALL answer: {e}") from None


def _status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"


def _op_name(op: int) -> str:
    try:
        return Opcode(op).name
    except ValueError:
        return f"opcode {op}"


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "connect/handshake timeout"
    if isinstance(e, HandshakeError):
        return f"handshake failed: {e.message}"
    return str(e) or type(e).__name__

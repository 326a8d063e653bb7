"""Client end of the remote link: :class:`PeerLink` keeps one authenticated connection to a peer
array up (reconnect with backoff, keepalive, up/down listeners) and sends its requests.
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
from ..logfmt import LOG_FIELDS
from ..origin import current_origin
from .api import LinkDown, LinkError, LinkTimeout, RemoteError, VolumeInfo
from .auth import ClientHandshake, HandshakeError
from .connection import LOGGER, FrameConnection, status_name
from .protocol import (
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
    decode_extents,
    decode_json,
    encode_data_header,
    encode_error,
    encode_frame,
    encode_json,
    error_message,
)

log = logging.getLogger(LOGGER)

Listener = Callable[[bool], Any]


class _ClientConnection(FrameConnection):
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
                self.close(f"peer error {status_name(frame.status)}: {error_message(frame.payload)}")
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
            raise RemoteError(frame.status, error_message(frame.payload) or status_name(frame.status))
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


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "connect/handshake timeout"
    if isinstance(e, HandshakeError):
        return f"handshake failed: {e.message}"
    return str(e) or type(e).__name__

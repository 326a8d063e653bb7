"""The asyncio side of the fault proxy: accept, connect upstream, and pump bytes through one
:class:`~storaged.faultproxy.scheduler.Scheduler` per direction.

Per connection there are four small tasks: for each direction a reader (socket -> scheduler, paused
while ``max_buffer`` bytes are queued, so a stalled link pushes back on the sender like a hung
one) and a writer (scheduler -> socket, sleeping until the scheduler's next release time). The
writer re-reads the faults at least every ``POLL`` seconds while bytes are queued, so clearing a
stall or lifting a bandwidth limit takes effect promptly without any change notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

from .faults import Direction, Faults
from .scheduler import Scheduler

log = logging.getLogger(__name__)

POLL = 0.02  # longest a writer sleeps with bytes queued before looking at the faults again
CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    """Counters over the proxy's life (``active`` is current)."""

    accepted: int = 0  # connections accepted (including refused ones)
    active: int = 0  # connections currently proxied
    closed: int = 0  # proxied connections that ended (any way)
    cut: int = 0  # connections the proxy reset: cut() plus drop_after_bytes
    dropped: int = 0  # of which by drop_after_bytes
    refused: int = 0  # accepted and reset at once because ``refuse`` was set
    upstream_errors: int = 0  # client reset because the upstream could not be reached
    bytes_c2s: int = 0  # bytes forwarded client -> server
    bytes_s2c: int = 0  # bytes forwarded server -> client
    penalties: int = 0  # chunks that drew a loss penalty

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Dropped(Exception):
    """drop_after_bytes reached in one direction."""


def _reset(writer: asyncio.StreamWriter | None, rst: bool = True) -> None:
    """Close at once, discarding buffered bytes; with ``rst``, SO_LINGER 0 makes it an RST."""
    if writer is None:
        return
    if rst:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pipe:
    """One direction of one connection."""

    def __init__(self, direction: Direction, rng: random.Random) -> None:
        self.direction = direction
        self.sched = Scheduler(rng)
        self.wakeup = asyncio.Event()  # writer: something was pushed (or eof)
        self.space = asyncio.Event()  # reader: something was popped


class _Connection:
    def __init__(self, proxy: FaultProxy, client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_r, self.client_w = client_r, client_w
        self.upstream_w: asyncio.StreamWriter | None = None
        self.pipes = {d: _Pipe(d, proxy.rng) for d in ("c2s", "s2c")}
        self.tasks: list[asyncio.Task[None]] = []
        self.ending: str | None = None  # set by whoever decides how the connection ends
        self.peer = client_w.get_extra_info("peername")

    async def run(self, upstream_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter) -> None:
        self.upstream_w = upstream_w
        c2s, s2c = self.pipes["c2s"], self.pipes["s2c"]
        self.tasks = [
            asyncio.create_task(self._read(self.client_r, c2s)),
            asyncio.create_task(self._write(upstream_w, c2s)),
            asyncio.create_task(self._read(upstream_r, s2c)),
            asyncio.create_task(self._write(self.client_w, s2c)),
        ]
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
            failures = [t.exception() for t in self.tasks if t.done() and not t.cancelled() and t.exception()]
            if self.ending is None:
                if any(isinstance(e, _Dropped) for e in failures):
                    self.reset("dropped")
                elif failures:
                    log.debug("connection from %s failed: %r", self.peer, failures[0])
                    self.reset("error")  # a reset on one side is passed on as a reset
                else:
                    self.ending = "closed"
                    self.client_w.close()
                    upstream_w.close()
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def reset(self, why: str, rst: bool = True) -> None:
        if self.ending is not None and self.ending != "closed":
            return
        self.ending = why
        if why in ("cut", "dropped"):
            self.proxy.stats.cut += 1
            if why == "dropped":
                self.proxy.stats.dropped += 1
        _reset(self.client_w, rst)
        _reset(self.upstream_w, rst)
        for t in self.tasks:
            t.cancel()

    async def _read(self, src: asyncio.StreamReader, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while pipe.sched.queued_bytes >= self.proxy.max_buffer:
                pipe.space.clear()
                await pipe.space.wait()
            data = await src.read(CHUNK)
            if not data:
                pipe.sched.eof()
                pipe.wakeup.set()
                return
            before = pipe.sched.penalties
            pipe.sched.push(data, loop.time(), self.proxy.faults.direction(pipe.direction))
            self.proxy.stats.penalties += pipe.sched.penalties - before
            pipe.wakeup.set()

    async def _write(self, dst: asyncio.StreamWriter, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        sched = pipe.sched
        counter = f"bytes_{pipe.direction}"
        while True:
            pipe.wakeup.clear()
            faults = self.proxy.faults.direction(pipe.direction)
            now = loop.time()
            data = sched.pop(now, faults)
            if data:
                dst.write(data)
                setattr(self.proxy.stats, counter, getattr(self.proxy.stats, counter) + len(data))
                pipe.space.set()
                await dst.drain()
                continue
            if sched.broken:
                await _wait_sent(dst)
                raise _Dropped(pipe.direction)
            if sched.finished:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            timeout: float | None = POLL if sched.queued_bytes else None
            wake = sched.next_wakeup(now, faults)
            if wake is not None:
                timeout = min(timeout if timeout is not None else POLL, wake - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await pipe.wakeup.wait()


async def _wait_sent(writer: asyncio.StreamWriter, limit: float = 1.0) -> None:
    """Before a deliberate reset, let the kernel send what was written (an RST discards it), so
    exactly drop_after_bytes reach the peer. Linux: SIOCOUTQ; elsewhere a short grace period."""
    await writer.drain()
    sock = writer.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        import fcntl
        import termios

        while loop.time() < deadline:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            if struct.unpack("i", buf)[0] == 0:
                return
            await asyncio.sleep(0.002)
    except (ImportError, OSError, AttributeError):
        await asyncio.sleep(0.05)


class FaultProxy:
    """A TCP proxy from ``listen`` to ``upstream`` that injects ``faults`` (mutable at runtime).

    ``upstream_netns`` creates upstream sockets inside that network namespace (see
    :mod:`storaged.faultproxy.netns`), so a proxy listening on 127.0.0.1 can reach a server in a
    namespace. ``seed`` makes jitter and loss reproducible.
    """

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], faults: Faults | None = None, *,
                 connect_timeout: float = 5.0, max_buffer: int = 4 << 20, upstream_netns: str | None = None,
                 seed: int | None = None) -> None:
        self.listen = listen
        self.upstream = upstream
        self.faults = faults if faults is not None else Faults()
        self.connect_timeout = connect_timeout
        self.max_buffer = max_buffer
        self.upstream_netns = upstream_netns
        self.rng = random.Random(seed)
        self.stats = ProxyStats()
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 in ``listen`` picks a free one)."""
        host, port = self.listen
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("fault proxy %s:%d -> %s:%d", *self.address, *self.upstream)
        return self.address

    async def close(self) -> None:
        """Stop listening and close every connection (without forwarding what is queued)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.reset("closed-by-proxy", rst=False)
        for task in self._handlers:
            task.cancel()  # also those still connecting upstream
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cut(self) -> int:
        """Reset every current connection (RST both ways), like a link going down; returns how many.
        New connections are still accepted unless ``faults.refuse`` is set."""
        conns = list(self._connections)
        for conn in conns:
            conn.reset("cut")
        return len(conns)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def queued(self) -> dict[str, int]:
        """Bytes held in the proxy right now, per direction."""
        return {d: sum(c.pipes[d].sched.queued_bytes for c in self._connections) for d in ("c2s", "s2c")}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # close(); asyncio's stream callback would log a cancelled handler as an error
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.faults.refuse:
            self.stats.refused += 1
            _reset(writer)
            return
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        self.stats.active += 1
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_r, up_w = await self._open_upstream()
            except (OSError, TimeoutError) as exc:
                self.stats.upstream_errors += 1
                log.info("upstream %s:%d unreachable: %r", *self.upstream, exc)
                conn.reset("upstream-error")
                return
            if conn.ending is not None:  # cut while connecting
                _reset(up_w)
                return
            await conn.run(up_r, up_w)
        finally:
            self._connections.discard(conn)
            self.stats.active -= 1
            self.stats.closed += 1

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.upstream
        if self.upstream_netns is None:
            return await asyncio.open_connection(host, port)
        from .netns import socket_in_netns

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = await asyncio.to_thread(socket_in_netns, self.upstream_netns, family)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

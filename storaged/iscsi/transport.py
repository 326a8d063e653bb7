"""asyncio adapter: sockets in and out of the sans-IO :class:`TargetConnection`.

Everything protocol-related happens in the connection object; this file only moves bytes, runs
SCSI commands as tasks, applies backpressure and keeps the session registry (reinstatement,
resets that reach other sessions, timers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from ..netio import BatchedWriter, tune_socket
from ..origin import ORIGIN
from ..scsi.types import Nexus, ScsiCommand, ScsiResult, Status
from .budget import Budget
from .conn_base import SESSION_WRITE_BUDGET
from .connection import (
    TMF,
    CloseConnection,
    Event,
    ExecuteCommand,
    LoggedIn,
    ResetRequested,
    TargetConnection,
    Task,
)
from .portal import Portal

log = logging.getLogger(__name__)

#: Write data all sessions together may have granted at once, and their task slots.
ARRAY_WRITE_BUDGET = 128 << 20
ARRAY_TASKS = 1024

#: Internal target failure (44h/00h), HARDWARE ERROR: an exception escaped a command handler.
_INTERNAL_FAILURE = bytes([0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0x00, 0, 0, 0, 0])


class ScsiTargetLike(Protocol):
    async def execute(self, cmd: ScsiCommand) -> ScsiResult: ...
    def reset_lun(self, lun: int, by: Nexus | None) -> object: ...
    def reset_target(self, by: Nexus | None, cold: bool) -> None: ...
    def nexus_lost(self, nexus: Nexus) -> None: ...


class IscsiServer:
    """All connections of one portal, and what is shared between them."""

    def __init__(
        self,
        portal: Portal,
        targets: dict[str, ScsiTargetLike],
        *,
        queue_depth: int = 128,
        nop_interval: float = 30.0,
        nop_timeout: float = 15.0,
        login_timeout: float = 15.0,
        session_write_budget: int = SESSION_WRITE_BUDGET,
        array_write_budget: int = ARRAY_WRITE_BUDGET,
        array_tasks: int = ARRAY_TASKS,
    ) -> None:
        self.portal = portal
        self.session_write_budget = session_write_budget
        #: write buffers and task slots shared by every session of this portal
        self.budget = Budget(array_write_budget, array_tasks)
        self.targets = targets
        self.queue_depth = queue_depth
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self.login_timeout = login_timeout
        self.connections: set[IscsiProtocol] = set()
        self.sessions: dict[tuple[str, bytes, str], IscsiProtocol] = {}
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: IscsiProtocol(self), host, port,
                                                reuse_address=True, backlog=128)
        sock = self._server.sockets[0]
        bound = sock.getsockname()[:2]
        self._ticker = asyncio.create_task(self._tick_loop(), name="iscsi-timers")
        return bound[0], bound[1]

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let running commands finish (up to ``grace`` s), drop all connections."""
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        running = [t.handle for c in self.connections for t in c.conn.tasks.values()
                   if isinstance(t.handle, asyncio.Task)]
        if running:
            await asyncio.wait(running, timeout=grace)
        for proto in list(self.connections):
            proto.close("daemon shutting down")
        if self._server is not None:
            await self._server.wait_closed()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for proto in list(self.connections):
                if proto.conn.closed:
                    continue  # closing, waiting for its last bytes to drain (or for the abort below)
                if not proto.conn.logged_in and now - proto.started > self.login_timeout:
                    failures = self.portal.login_failures  # a half-done login is a failed one to an operator
                    failures["timeout"] = failures.get("timeout", 0) + 1
                    # Nothing worth flushing to a login that never finished; a peer that does not read
                    # would otherwise hold the connection (and its buffer) open.
                    proto.close(f"login not finished within {self.login_timeout:.0f}s", abort=True)
                    continue
                proto.handle_events(proto.conn.tick(now))

    # --- session registry ------------------------------------------------------------------

    def logged_in(self, proto: IscsiProtocol, ev: LoggedIn) -> None:
        r = ev.result
        key = (r.initiator, bytes(r.isid), r.target.name if r.target else "")
        old = self.sessions.get(key)
        if old is not None and old is not proto:
            log.info("session reinstatement: %s isid=%s replaces TSIH %s", r.initiator, r.isid.hex(),
                     old.conn.session.tsih if old.conn.session else "?")
            old.close("session reinstated by a new login", lost_nexus=True)
        self.sessions[key] = proto
        proto.session_key = key
        self.portal.live_tsihs.add(r.tsih)

    def forget(self, proto: IscsiProtocol) -> None:
        self.connections.discard(proto)
        if proto.session_key is not None and self.sessions.get(proto.session_key) is proto:
            del self.sessions[proto.session_key]
        if proto.conn.session is not None:
            self.portal.live_tsihs.discard(proto.conn.session.tsih)

    def reset(self, proto: IscsiProtocol, ev: ResetRequested) -> None:
        target = self.targets.get(ev.nexus.target)
        if target is None:
            return
        cold = ev.function == TMF.TARGET_COLD_RESET
        lun = ev.lun if ev.function == TMF.LOGICAL_UNIT_RESET else None
        if lun is not None:
            target.reset_lun(lun, ev.nexus)
        else:
            target.reset_target(ev.nexus, cold)
        for other in list(self.connections):
            if other is proto or other.conn.nexus is None or other.conn.nexus.target != ev.nexus.target:
                continue
            other.conn.abort_tasks(lun)
            if cold:
                other.close("target cold reset", lost_nexus=True)


class IscsiProtocol(asyncio.Protocol):
    """One TCP connection."""

    def __init__(self, server: IscsiServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.conn = TargetConnection(server.portal, self.started, queue_depth=server.queue_depth,
                                     nop_interval=server.nop_interval, nop_timeout=server.nop_timeout,
                                     session_write_budget=server.session_write_budget,
                                     array_budget=server.budget)
        self.conn.wake = self._wake
        self.transport: asyncio.Transport | None = None
        self.session_key: tuple[str, bytes, str] | None = None
        self.peer = "?"
        self._nexus_released = False
        self._paused = False
        self.out = BatchedWriter(self.loop)
        self._execute: Callable[[ScsiCommand], object] | None = None

    # --- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        self.transport = transport  # type: ignore[assignment]
        self.out.transport = transport  # type: ignore[assignment]
        self.peer = tune_socket(transport)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.conn.local_address = (str(sockname[0]), int(sockname[1]))
        self.server.connections.add(self)
        log.debug("connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        self.handle_events(self.conn.receive_data(data, self.loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True
        self.conn.abort_tasks(None)
        self._release_nexus()
        self.server.forget(self)
        log.info("connection from %s closed%s", self.peer, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        # The initiator is not reading its responses: stop reading its commands too.
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused:
            self._paused = False
            self.transport.resume_reading()

    # --- events ----------------------------------------------------------------------------

    def _wake(self) -> None:
        """Another session gave write budget back: retry our waiting writes on the next iteration
        (not inside that session's event handling)."""
        self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self.handle_events(self.conn.resume())

    def handle_events(self, events: list[Event]) -> None:
        self.out.queue(self.conn.data_to_send())
        for ev in events:
            if isinstance(ev, ExecuteCommand):
                task = ev.task
                task.handle = self.loop.create_task(self._run(task))
            elif isinstance(ev, LoggedIn):
                self.server.logged_in(self, ev)
                if ev.nexus is not None:
                    target = self.server.targets.get(ev.nexus.target)
                    if target is not None:
                        self._execute = target.execute
            elif isinstance(ev, ResetRequested):
                self.server.reset(self, ev)
            elif isinstance(ev, CloseConnection):
                self.out.flush()
                if self.transport is not None:
                    self.transport.close()

    async def _run(self, task: Task) -> None:
        nexus = self.conn.nexus
        assert nexus is not None and self._execute is not None
        ORIGIN.set(nexus.initiator)  # this task's own context: command devices see who asked
        try:
            result = await self._execute(task.command(nexus))  # type: ignore[misc]
        except Exception:
            log.exception("%s: command %s failed inside the target", self.peer, task.cdb[:1].hex())
            result = ScsiResult(Status.CHECK_CONDITION, None, _INTERNAL_FAILURE)
        self.handle_events(self.conn.command_done(task, result))
        if not self.conn.tasks:
            # Nothing else in flight on this connection: no later response to batch with, so
            # send now rather than one loop iteration later (what QD1 latency is made of).
            self.out.flush()

    # --- closing ---------------------------------------------------------------------------

    def close(self, reason: str, lost_nexus: bool = False, abort: bool = False) -> None:
        """Close the connection; ``abort`` drops what is still queued for the peer instead of sending it."""
        log.info("%s: %s", self.peer, reason)
        self.conn.closed = True
        self.conn.abort_tasks(None)
        if lost_nexus:
            self._release_nexus()
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _release_nexus(self) -> None:
        """I_T nexus loss: SPC-2 reservations and similar per-nexus state go away."""
        if self._nexus_released or self.conn.nexus is None:
            return
        self._nexus_released = True
        target = self.server.targets.get(self.conn.nexus.target)
        if target is not None:
            target.nexus_lost(self.conn.nexus)

"""One iSCSI connection on the target side, sans-IO (RFC 7143): login, then full feature phase.

Bytes go in through :meth:`TargetConnection.receive_data`, which returns events for the owner to
act on (run a SCSI command, reset a LU, close the socket); bytes to send accumulate and are taken
with :meth:`data_to_send`. Time is passed in (``now``) so timers are testable. One connection per
session (MaxConnections=1) and ErrorRecoveryLevel 0: any framing or sequencing error that could
leave the initiator and target disagreeing closes the connection, and the initiator recovers by
logging in again (session reinstatement).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..scsi.types import Nexus, ScsiResult, Status
from .budget import Budget, take_both
from .login import LoginMachine, LoginResult
from .params import SessionParams
from .pdu import (
    PDU,
    RESERVED_TAG,
    DigestError,
    Opcode,
    PDUError,
    PDUReader,
    RejectReason,
    decode_lun,
    encode,
    encode_lun,
    format_text,
    parse_text,
)
from .portal import Portal
from .tasks import (
    TMF,
    CloseConnection,
    Event,
    ExecuteCommand,
    LoggedIn,
    R2TState,
    ResetRequested,
    Task,
    TMFResponse,
)

__all__ = [
    "TMF",
    "CloseConnection",
    "Event",
    "ExecuteCommand",
    "LoggedIn",
    "ProtocolViolation",
    "ResetRequested",
    "TMFResponse",
    "TargetConnection",
    "Task",
    "sn_le",
    "sn_lt",
]

log = logging.getLogger(__name__)

_MASK = 0xFFFFFFFF
#: Largest Expected Data Transfer Length we buffer for one write; beyond it the command fails.
MAX_WRITE_BUFFER = 64 << 20
#: Write data one session may have granted (asked for or accepted) at once, unless configured.
SESSION_WRITE_BUDGET = 32 << 20
_WILDCARDS = ("0.0.0.0", "::", "")


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic a < b (RFC 1982, 32 bits)."""
    return a != b and ((b - a) & _MASK) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


@dataclass(slots=True)
class _PendingTMF:
    pdu: PDU
    waiting: set[int]


class ProtocolViolation(Exception):
    """The initiator broke a rule we cannot recover from at ERL 0: close the connection."""


# --- the connection ----------------------------------------------------------------------


class TargetConnection:
    def __init__(
        self,
        portal: Portal,
        now: float = 0.0,
        *,
        queue_depth: int = 128,
        nop_interval: float = 30.0,
        nop_timeout: float = 15.0,
        session_write_budget: int = SESSION_WRITE_BUDGET,
        array_budget: Budget | None = None,
    ) -> None:
        self.portal = portal
        self.reader = PDUReader(max_data_segment=8192 * 8)
        self.login: LoginMachine | None = LoginMachine(portal)
        self.session: LoginResult | None = None
        self.params = SessionParams()
        self.nexus: Nexus | None = None
        self.queue_depth = queue_depth
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self.statsn = 0
        self.exp_cmdsn = 0
        self.max_cmdsn = 0
        self.cid = 0
        self.tasks: dict[int, Task] = {}
        self._ooo: dict[int, PDU] = {}
        self._out: list[bytes | memoryview] = []
        self._events: list[Event] = []
        self._next_ttt = 1
        self._pending_tmfs: list[_PendingTMF] = []
        self._pending_logout: PDU | None = None
        self._text_chunks: dict[int, list[bytes]] = {}
        self._last_rx = now
        self._ping_ttt: int | None = None
        self._ping_sent = 0.0
        self.closed = False
        #: write data granted to this session's tasks; its task slots are the CmdSN window
        self.budget = Budget(session_write_budget, queue_depth)
        #: shared by every session of the array (a private, unlimited one when not given)
        self.array_budget = array_budget if array_budget is not None else Budget(1 << 62, 1 << 30)
        #: writes waiting, in arrival order, for room in the budgets before their first R2T
        self._waiting: deque[Task] = deque()
        self._ooo_bytes = 0
        self._out_of_window = 0
        #: set by the owner: called when another session gave array budget back (then call resume)
        self.wake: Callable[[], None] | None = None
        #: (host, port) the connection arrived on, announced by SendTargets on a wildcard portal
        self.local_address: tuple[str, int] | None = None

    # --- public API ------------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self.session is not None

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> list[Event]:
        """Buffer received bytes and process every complete PDU."""
        if now is not None:
            self._last_rx = now
            self._ping_ttt = None
        self.reader.feed(data)
        while not self.closed:
            try:
                pdu = self.reader.next_pdu()
            except DigestError as exc:
                log.warning("%s: data digest error on opcode %#x", self._who(), exc.pdu.opcode)
                self._reject(exc.pdu, RejectReason.DATA_DIGEST_ERROR)
                if exc.pdu.opcode in (Opcode.DATA_OUT, Opcode.SCSI_COMMAND):
                    # the task's data is now incomplete; at ERL 0 the session must recover
                    self._close("data digest error on a data-carrying PDU")
                continue
            except PDUError as exc:
                self._close(f"framing error: {exc}")
                break
            if pdu is None:
                break
            try:
                self._dispatch(pdu)
            except ProtocolViolation as exc:
                self._close(f"protocol error: {exc}")
        return self._take_events()

    def data_to_send(self) -> list[bytes | memoryview]:
        out, self._out = self._out, []
        return out

    def command_done(self, task: Task, result: ScsiResult) -> list[Event]:
        """Send the outcome of a command the owner ran after :class:`ExecuteCommand`."""
        task.executing = False
        self._drop_task(task)
        if not task.aborted and not self.closed:
            self._send_result(task, result)
        self._task_finished(task)
        self._pump_grants()
        return self._take_events()

    def abort_tasks(self, lun: int | None) -> None:
        """Abort every task on ``lun`` (all LUNs if None): another session reset the LU or target,
        or this connection is gone."""
        for task in list(self.tasks.values()):
            if lun is None or task.lun == lun:
                self._abort(task)
        if lun is None:
            self.array_budget.forget(id(self))
        self._pump_grants()

    def resume(self) -> list[Event]:
        """Retry writes waiting for budget (after :attr:`wake` was called)."""
        if not self.closed:
            self._pump_grants()
        return self._take_events()

    def tick(self, now: float) -> list[Event]:
        """Drive timers: NOP-In pings on an idle link, and dropping a link that stopped answering."""
        if self.session is None or self.closed:
            return self._take_events()
        if self._ping_ttt is not None:
            if now - self._ping_sent > self.nop_timeout:
                self._close(f"no answer to NOP-In ping for {self.nop_timeout:.0f}s")
        elif self.nop_interval > 0 and now - self._last_rx > self.nop_interval:
            self._ping_ttt = self._new_ttt()
            self._ping_sent = now
            self._send(PDU(Opcode.NOP_IN, flags=0x80, lun=bytes(8), itt=RESERVED_TAG, w20=self._ping_ttt,
                           w24=self.statsn, w28=self.exp_cmdsn, w32=self.max_cmdsn))
        return self._take_events()

    # --- plumbing --------------------------------------------------------------------------

    def _who(self) -> str:
        if self.session is not None:
            return f"{self.session.initiator} isid={self.session.isid.hex()}"
        return "connection"

    def _take_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def _close(self, reason: str, clean: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        (log.info if clean else log.warning)("%s: closing: %s", self._who(), reason)
        self._events.append(CloseConnection(reason, clean))

    def _send(self, pdu: PDU) -> None:
        self._out.extend(encode(pdu, self.params.header_digest, self.params.data_digest))

    def _next_statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & _MASK
        return sn

    def _update_window(self) -> None:
        """Open the CmdSN window by the free task slots; MaxCmdSN = ExpCmdSN - 1 closes it
        (RFC 7143 s.4.2.2.1). MaxCmdSN never moves back, so a full queue keeps the window shut
        until tasks finish."""
        proposed = (self.exp_cmdsn - 1 + self._free_slots()) & _MASK
        if sn_lt(self.max_cmdsn, proposed):
            self.max_cmdsn = proposed

    def _free_slots(self) -> int:
        return max(min(self.queue_depth - len(self.tasks), self.array_budget.tasks_free), 0)

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (ttt + 1) & 0x7FFFFFFF or 1
        return ttt

    def _reject(self, pdu: PDU, reason: RejectReason) -> None:
        self._update_window()
        header = pdu.raw_header or pdu.header_bytes()
        self._send(PDU(Opcode.REJECT, flags=0x80, b2=reason, itt=RESERVED_TAG,
                       w24=self._next_statsn() if self.session else 0,
                       w28=self.exp_cmdsn, w32=self.max_cmdsn, data=header))

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, pdu: PDU) -> None:
        if self.login is not None:
            self._login_pdu(pdu)
            return
        op = pdu.opcode
        if op == Opcode.DATA_OUT:
            self._data_out(pdu)
            return
        if op == Opcode.SNACK_REQUEST:
            self._reject(pdu, RejectReason.COMMAND_NOT_SUPPORTED)  # ERL 0: no SNACK
            return
        if op not in _ORDERED_HANDLERS:
            if op == Opcode.LOGIN_REQUEST:
                raise ProtocolViolation("Login Request in full feature phase")
            self._reject(pdu, RejectReason.COMMAND_NOT_SUPPORTED)
            return
        if op == Opcode.NOP_OUT and pdu.itt == RESERVED_TAG:
            # The initiator's answer to our ping (always immediate): nothing to send back.
            if not pdu.immediate:
                raise ProtocolViolation("NOP-Out with reserved ITT must be immediate")
            self._ping_ttt = None
            return
        if self._pending_logout is not None:
            self._reject(pdu, RejectReason.WAITING_FOR_LOGOUT)
            return
        if pdu.immediate:
            _ORDERED_HANDLERS[op](self, pdu)
            return
        sn = pdu.cmdsn
        if sn == self.exp_cmdsn and sn_le(sn, self.max_cmdsn):
            self.exp_cmdsn = (sn + 1) & _MASK
            _ORDERED_HANDLERS[op](self, pdu)
            while self._ooo and self.exp_cmdsn in self._ooo:
                nxt = self._ooo.pop(self.exp_cmdsn)
                self._ooo_bytes -= len(nxt.data)
                self.exp_cmdsn = (self.exp_cmdsn + 1) & _MASK
                _ORDERED_HANDLERS[nxt.opcode](self, nxt)
        elif sn_lt(self.exp_cmdsn, sn) and sn_le(sn, self.max_cmdsn):
            if sn not in self._ooo:
                self._ooo_bytes += len(pdu.data)
                if self._ooo_bytes > self.budget.max_bytes:
                    raise ProtocolViolation("out-of-order commands hold more data than the session may buffer")
                self._ooo[sn] = pdu
        else:
            # RFC 7143 s.4.2.2.1: outside the window, silently ignored (logged 1st, 2nd, 4th... time,
            # so an initiator ignoring the window cannot flood the log).
            self._out_of_window += 1
            if self._out_of_window & (self._out_of_window - 1) == 0:
                log.warning("%s: CmdSN %d outside window [%d, %d], ignored (%d so far)", self._who(), sn,
                            self.exp_cmdsn, self.max_cmdsn, self._out_of_window)

    def _login_pdu(self, pdu: PDU) -> None:
        assert self.login is not None
        resp = self.login.handle(pdu)
        self.statsn = self.login.statsn or 0
        # the window the session starts with is the one it will have: queue_depth task slots
        resp.w32 = (self.login.exp_cmdsn - 1 + max(self._free_slots(), 1)) & _MASK
        self._send(resp)
        if self.login.failed:
            self._close("login failed")
            return
        result = self.login.result
        if result is None:
            return
        self.login = None
        self.session = result
        self.params = result.params
        self.statsn = result.statsn
        self.exp_cmdsn = result.exp_cmdsn
        self.max_cmdsn = (result.exp_cmdsn - 1) & _MASK
        self.cid = pdu.w20 >> 16
        self._update_window()
        # digests apply from the first PDU after the final Login Response, both ways
        self.reader.header_digest = self.params.header_digest
        self.reader.data_digest = self.params.data_digest
        self.reader.max_data_segment = self.params.target_mrdsl
        if result.target is not None:
            self.nexus = Nexus(result.initiator, result.isid, result.target.name,
                               result.target.portal_group_tag)
        p = self.params
        log.info("%s: logged in to %s (%s session, TSIH %d, digests header=%s data=%s, MaxRecvDataSegmentLength"
                 " %d/%d, MaxBurstLength %d, FirstBurstLength %d, InitialR2T %s, ImmediateData %s)",
                 self._who(), result.target.name if result.target else "discovery",
                 "discovery" if result.discovery else "normal", result.tsih,
                 "CRC32C" if p.header_digest else "None", "CRC32C" if p.data_digest else "None",
                 p.initiator_mrdsl, p.target_mrdsl, p.max_burst_length, p.first_burst_length,
                 "Yes" if p.initial_r2t else "No", "Yes" if p.immediate_data else "No")
        self._events.append(LoggedIn(result, self.nexus))

    # --- SCSI commands and data ------------------------------------------------------------

    def _scsi_command(self, pdu: PDU) -> None:
        assert self.session is not None
        if self.session.discovery or self.nexus is None:
            self._reject(pdu, RejectReason.PROTOCOL_ERROR)
            return
        if pdu.itt in self.tasks:
            self._reject(pdu, RejectReason.TASK_IN_PROGRESS)
            return
        flags = pdu.flags
        cdb = pdu.raw_header[32:48]
        if pdu.ahs:
            cdb = self._extended_cdb(cdb, pdu.ahs)
        edtl = pdu.w20
        task = Task(pdu.itt, decode_lun(pdu.lun), cdb, pdu.cmdsn, pdu.immediate,
                    bool(flags & 0x40), bool(flags & 0x20), edtl, flags & 7)
        immediate = pdu.data
        p = self.params
        if immediate and not task.write:
            self._reject(pdu, RejectReason.PROTOCOL_ERROR)
            return
        if task.write:
            if immediate and not p.immediate_data:
                raise ProtocolViolation("immediate data sent although ImmediateData=No")
            if len(immediate) > edtl or len(immediate) > p.first_burst_length:
                raise ProtocolViolation(f"{len(immediate)} bytes of immediate data for EDTL {edtl}")
            if not (flags & 0x80) and p.initial_r2t:
                raise ProtocolViolation("F=0 on a command although InitialR2T=Yes")
        full = self._no_room_for_task()
        if full is not None:
            self._send_result(task, ScsiResult(full))
            return
        if not task.write:
            self._add_task(task)
            self._execute(task)
            return
        if edtl > MAX_WRITE_BUFFER:
            # Refuse before buffering; any unsolicited data that follows is dropped (unknown ITT).
            self._send_result(task, _too_large())
            return
        unsol_limit = 0 if p.initial_r2t else min(p.first_burst_length, edtl)
        task.unsol_limit = max(unsol_limit, len(immediate))
        task.unsol_open = not (flags & 0x80)
        if not self._waiting and take_both(self.budget, self.array_budget, edtl):
            task.granted = edtl
        elif immediate or task.unsol_open:
            # Data is coming that we have no room for: refuse the command (SAM-5 s.5.3), drop its data.
            self._send_result(task, ScsiResult(Status.TASK_SET_FULL if self.tasks else Status.BUSY))
            return
        else:
            self._waiting.append(task)  # nothing arrives before its first R2T: it holds no memory
            self._wait_for_array(edtl)
        self._add_task(task)
        if immediate:
            task.parts.append((0, immediate))
            task.received = len(immediate)
        self._progress_write(task)

    def _no_room_for_task(self) -> Status | None:
        """TASK SET FULL when this nexus already has commands, else BUSY (SAM-5 s.5.3), if no task
        slot is free: the session's queue (reachable only with immediate commands, the CmdSN window
        keeps the rest out) or the array's."""
        if len(self.tasks) < self.queue_depth and self.array_budget.tasks_free > 0:
            return None
        return Status.TASK_SET_FULL if self.tasks else Status.BUSY

    def _add_task(self, task: Task) -> None:
        self.tasks[task.itt] = task
        task.counted = True
        self.array_budget.take_task()

    def _drop_task(self, task: Task) -> None:
        """Forget a task and give back its slot and write grant."""
        if self.tasks.get(task.itt) is task:
            del self.tasks[task.itt]
        if task.counted:
            task.counted = False
            self.array_budget.give_task()
        if task.granted:
            granted, task.granted = task.granted, 0
            self.budget.give(granted)
            self.array_budget.give(granted)
        elif task in self._waiting:
            self._waiting.remove(task)
        task.parts = []

    def _pump_grants(self) -> None:
        """Grant waiting writes their buffer, oldest first, and send their R2Ts."""
        while self._waiting and not self.closed:
            task = self._waiting[0]
            if not take_both(self.budget, self.array_budget, task.edtl):
                self._wait_for_array(task.edtl)
                return
            self._waiting.popleft()
            task.granted = task.edtl
            self._progress_write(task)

    def _wait_for_array(self, n: int) -> None:
        if not self.array_budget.fits(n):
            self.array_budget.wait(id(self), self._array_room)

    def _array_room(self) -> None:
        if self.wake is not None and not self.closed:
            self.wake()

    @staticmethod
    def _extended_cdb(cdb: bytes, ahs: bytes) -> bytes:
        pos = 0
        while pos + 4 <= len(ahs):
            length = int.from_bytes(ahs[pos : pos + 2], "big")
            kind = ahs[pos + 2]
            if kind == 1:  # Extended CDB AHS: bytes beyond the first 16
                return cdb + ahs[pos + 4 : pos + 3 + length]
            pos += 4 + ((length - 1 + 3) & ~3) if length else 4
        return cdb

    def _progress_write(self, task: Task) -> None:
        if task.granted < task.edtl:
            return  # waiting for room in the budgets
        if task.received >= task.edtl:
            self._execute(task)
            return
        if task.unsol_open:
            return  # wait for the rest of the unsolicited burst
        task.next_r2t_offset = max(task.next_r2t_offset, task.received)
        p = self.params
        while len(task.r2ts) < p.max_outstanding_r2t and task.next_r2t_offset < task.edtl:
            length = min(p.max_burst_length, task.edtl - task.next_r2t_offset)
            ttt = self._new_ttt()
            task.r2ts[ttt] = R2TState(task.next_r2t_offset, length)
            self._update_window()
            self._send(PDU(Opcode.R2T, flags=0x80, lun=_lun_field(task.lun), itt=task.itt, w20=ttt,
                           w24=self.statsn, w28=self.exp_cmdsn, w32=self.max_cmdsn, w36=task.r2tsn,
                           w40=task.next_r2t_offset, w44=length))
            task.r2tsn += 1
            task.next_r2t_offset += length

    def _data_out(self, pdu: PDU) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or not task.write:
            # Data for a task we already finished or refused (e.g. too large): drop it.
            log.debug("%s: Data-Out for unknown ITT %#x dropped", self._who(), pdu.itt)
            return
        if task.executing:
            raise ProtocolViolation("Data-Out after all data was received")
        data = pdu.data
        offset = pdu.w40
        datasn = pdu.w36
        final = pdu.final
        if pdu.ttt == RESERVED_TAG:
            if not task.unsol_open:
                self._fail_task(task, 0x4B, 0x02, "unsolicited Data-Out outside the first burst")
                return
            if datasn != task.unsol_datasn:
                self._fail_task(task, 0x4B, 0x00, f"unsolicited DataSN {datasn}, expected {task.unsol_datasn}")
                return
            if offset != task.received:
                self._fail_task(task, 0x4B, 0x05, f"unsolicited offset {offset}, expected {task.received}")
                return
            if offset + len(data) > task.unsol_limit:
                self._fail_task(task, 0x4B, 0x02, "unsolicited data beyond FirstBurstLength")
                return
            task.unsol_datasn += 1
            if final:
                task.unsol_open = False
        else:
            r2t = task.r2ts.get(pdu.ttt)
            if r2t is None:
                self._fail_task(task, 0x4B, 0x01, f"Data-Out with unknown TTT {pdu.ttt:#x}")
                return
            if datasn != r2t.next_datasn:
                self._fail_task(task, 0x4B, 0x00, f"DataSN {datasn}, expected {r2t.next_datasn}")
                return
            if offset != r2t.offset + r2t.received:
                self._fail_task(task, 0x4B, 0x05, f"offset {offset}, expected {r2t.offset + r2t.received}")
                return
            if r2t.received + len(data) > r2t.length:
                self._fail_task(task, 0x4B, 0x02, "Data-Out beyond the R2T's desired length")
                return
            r2t.next_datasn += 1
            r2t.received += len(data)
            if final:
                if r2t.received != r2t.length:
                    self._fail_task(task, 0x4B, 0x00, "R2T sequence ended early")
                    return
                del task.r2ts[pdu.ttt]
        task.parts.append((offset, data))
        task.received += len(data)
        if final or task.received >= task.edtl:
            self._progress_write(task)

    def _fail_task(self, task: Task, asc: int, ascq: int, why: str) -> None:
        """End a write whose data phase broke the rules: CHECK CONDITION, ABORTED COMMAND with the
        iSCSI-specific ASC (RFC 7143 s.11.4.7.2). The connection stays up; later Data-Out PDUs
        for the task are dropped as belonging to no task."""
        log.warning("%s: ITT %#x failed: %s", self._who(), task.itt, why)
        self._drop_task(task)
        sense = bytes([0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])
        self._send_result(task, ScsiResult(Status.CHECK_CONDITION, None, sense))
        self._task_finished(task)
        self._pump_grants()

    def _execute(self, task: Task) -> None:
        task.executing = True
        self._update_window()
        self._events.append(ExecuteCommand(task))

    def _send_result(self, task: Task, result: ScsiResult) -> None:
        self._update_window()
        lun = _lun_field(task.lun)
        status = result.status
        data = result.data
        residual_flags = 0
        residual = 0
        expdatasn = 0
        if task.read and data is not None and len(data) and task.edtl:
            n = len(data)
            send = min(n, task.edtl)
            if n < task.edtl:
                residual_flags, residual = 0x02, task.edtl - n
            elif n > task.edtl:
                residual_flags, residual = 0x04, n - task.edtl
            view = memoryview(data)[:send]
            collapse = status == Status.GOOD and not result.sense
            seg = self.params.initiator_mrdsl
            burst = self.params.max_burst_length
            pos = 0
            datasn = 0
            while pos < send:
                n_seg = min(seg, send - pos, burst - pos % burst)
                last = pos + n_seg >= send
                flags = 0x80 if (last or (pos + n_seg) % burst == 0) else 0
                w24 = 0
                b3 = 0
                if last and collapse:
                    flags |= 0x01 | residual_flags
                    b3 = status
                    w24 = self._next_statsn()
                    w44 = residual
                else:
                    w44 = 0
                self._out.extend(encode(PDU(Opcode.DATA_IN, flags=flags, b3=b3, lun=lun, itt=task.itt,
                                            w20=RESERVED_TAG, w24=w24, w28=self.exp_cmdsn,
                                            w32=self.max_cmdsn, w36=datasn, w40=pos, w44=w44,
                                            data=view[pos : pos + n_seg]),
                                        self.params.header_digest, self.params.data_digest))
                datasn += 1
                pos += n_seg
            if collapse:
                return
            expdatasn = datasn
        else:
            if data is not None and len(data) and not task.edtl:
                # The CDB asked for data the initiator gave no room for (EDTL 0): all of it overflows.
                residual_flags, residual = 0x04, len(data)
            elif task.read and task.edtl:
                residual_flags, residual = 0x02, task.edtl
            elif task.write:
                expdatasn = task.r2tsn
                needed = result.extra.get("spdtl")
                if isinstance(needed, int):
                    if needed < task.edtl:
                        residual_flags, residual = 0x02, task.edtl - needed
                    elif needed > task.edtl:
                        residual_flags, residual = 0x04, needed - task.edtl
        sense = b""
        if result.sense:
            sense = len(result.sense).to_bytes(2, "big") + result.sense
        self._send(PDU(Opcode.SCSI_RESPONSE, flags=0x80 | residual_flags, b2=0, b3=status, lun=bytes(8),
                       itt=task.itt, w24=self._next_statsn(), w28=self.exp_cmdsn, w32=self.max_cmdsn,
                       w36=expdatasn, w44=residual, data=sense))

    # --- other requests --------------------------------------------------------------------

    def _nop_out(self, pdu: PDU) -> None:
        self._update_window()
        data = pdu.data[: self.params.initiator_mrdsl]
        self._send(PDU(Opcode.NOP_IN, flags=0x80, lun=pdu.lun, itt=pdu.itt, w20=RESERVED_TAG,
                       w24=self._next_statsn(), w28=self.exp_cmdsn, w32=self.max_cmdsn, data=data))

    def _text(self, pdu: PDU) -> None:
        assert self.session is not None
        if pdu.ttt != RESERVED_TAG:
            chunks = self._text_chunks.get(pdu.ttt)
            if chunks is None:
                self._reject(pdu, RejectReason.INVALID_PDU_FIELD)
                return
            self._send_text_chunk(pdu, pdu.ttt, chunks)
            return
        try:
            pairs = parse_text(pdu.data)
        except (ValueError, UnicodeDecodeError):
            self._reject(pdu, RejectReason.PROTOCOL_ERROR)
            return
        reply: list[tuple[str, str]] = []
        for key, value in pairs:
            if key == "SendTargets":
                reply += self._send_targets(value)
            elif key == "MaxRecvDataSegmentLength":
                try:
                    self.params.initiator_mrdsl = max(512, min(int(value), (1 << 24) - 1))
                except ValueError:
                    reply.append((key, "Reject"))
            else:
                reply.append((key, "NotUnderstood"))
        body = format_text(reply)
        seg = self.params.initiator_mrdsl
        chunks = [body[i : i + seg] for i in range(0, len(body), seg)] or [b""]
        ttt = self._new_ttt() if len(chunks) > 1 else RESERVED_TAG
        if ttt != RESERVED_TAG:
            self._text_chunks[ttt] = chunks
        self._send_text_chunk(pdu, ttt, chunks)

    def _send_text_chunk(self, pdu: PDU, ttt: int, chunks: list[bytes]) -> None:
        chunk = chunks.pop(0)
        more = bool(chunks)
        if not more:
            self._text_chunks.pop(ttt, None)
        self._update_window()
        self._send(PDU(Opcode.TEXT_RESPONSE, flags=0x40 if more else 0x80, lun=pdu.lun, itt=pdu.itt,
                       w20=ttt if more else RESERVED_TAG, w24=self._next_statsn(), w28=self.exp_cmdsn,
                       w32=self.max_cmdsn, data=chunk))

    def _send_targets(self, value: str) -> list[tuple[str, str]]:
        assert self.session is not None
        initiator = self.session.initiator
        if value == "All":
            targets = self.portal.visible_targets(initiator)
        elif value == "":
            targets = [self.session.target] if self.session.target is not None else []
        else:
            t = self.portal.targets.get(value)
            targets = [t] if t is not None and t.allows(initiator) else []
        out: list[tuple[str, str]] = []
        for t in targets:
            out.append(("TargetName", t.name))
            for addr in self.portal.addresses:
                out.append(("TargetAddress", f"{self._reachable(addr)},{t.portal_group_tag}"))
        return out

    def _reachable(self, addr: str) -> str:
        """A wildcard portal (0.0.0.0, [::]) is announced as the address this connection arrived
        on, which the initiator can reach; configured addresses are announced as they are."""
        host, _, port = addr.rpartition(":")
        if host.strip("[]") not in _WILDCARDS or self.local_address is None:
            return addr
        local = self.local_address[0]
        return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"

    def _logout(self, pdu: PDU) -> None:
        reason = pdu.flags & 0x7F
        if reason == 2:
            response = 2  # connection recovery is not supported at ERL 0
        elif reason == 1 and (pdu.w20 >> 16) != self.cid:
            response = 1  # CID not found
        else:
            response = 0
        if response == 0 and any(t.executing for t in self.tasks.values()):
            self._pending_logout = pdu  # answered once the running commands finish
            return
        self._send_logout_response(pdu, response)

    def _send_logout_response(self, pdu: PDU, response: int) -> None:
        self._update_window()
        p = self.params
        self._send(PDU(Opcode.LOGOUT_RESPONSE, flags=0x80, b2=response, itt=pdu.itt,
                       w24=self._next_statsn(), w28=self.exp_cmdsn, w32=self.max_cmdsn,
                       w40=(p.default_time2wait << 16) | p.default_time2retain))
        if response == 0:
            self._close("logout", clean=True)

    def _task_mgmt(self, pdu: PDU) -> None:
        assert self.session is not None
        function = pdu.flags & 0x7F
        lun = decode_lun(pdu.lun)
        target = self.session.target
        response = TMFResponse.COMPLETE
        affected: list[Task] = []
        if self.session.discovery or self.nexus is None or target is None:
            response = TMFResponse.REJECTED
        elif function == TMF.ABORT_TASK:
            task = self.tasks.get(pdu.w20)
            if task is None or task.lun != lun:
                response = TMFResponse.NO_TASK
            else:
                affected = [task]
        elif function in (TMF.ABORT_TASK_SET, TMF.CLEAR_TASK_SET, TMF.LOGICAL_UNIT_RESET):
            if target.luns is not None and lun not in target.luns:
                response = TMFResponse.NO_LUN
            else:
                affected = [t for t in self.tasks.values() if t.lun == lun]
        elif function in (TMF.TARGET_WARM_RESET, TMF.TARGET_COLD_RESET):
            affected = list(self.tasks.values())
        elif function == TMF.CLEAR_ACA:
            response = TMFResponse.COMPLETE  # we never establish ACA
        elif function == TMF.TASK_REASSIGN:
            response = TMFResponse.REASSIGN_UNSUPPORTED
        else:
            response = TMFResponse.NOT_SUPPORTED
        if response != TMFResponse.COMPLETE:
            self._send_tmf_response(pdu, response)
            return
        waiting = {t.itt for t in affected if self._abort(t)}
        if function in (TMF.LOGICAL_UNIT_RESET, TMF.TARGET_WARM_RESET, TMF.TARGET_COLD_RESET):
            self._events.append(ResetRequested(function, lun, self.nexus))
        if waiting:
            self._pending_tmfs.append(_PendingTMF(pdu, waiting))
        else:
            self._send_tmf_response(pdu, TMFResponse.COMPLETE)
        self._pump_grants()

    def _abort(self, task: Task) -> bool:
        """Abort a task; True if it is running and the abort completes only when it returns."""
        task.aborted = True
        if task.executing:
            return True
        self._drop_task(task)
        return False

    def _task_finished(self, task: Task) -> None:
        for pending in list(self._pending_tmfs):
            pending.waiting.discard(task.itt)
            if not pending.waiting:
                self._pending_tmfs.remove(pending)
                self._send_tmf_response(pending.pdu, TMFResponse.COMPLETE)
        if self._pending_logout is not None and not any(t.executing for t in self.tasks.values()):
            pdu, self._pending_logout = self._pending_logout, None
            self._send_logout_response(pdu, 0)

    def _send_tmf_response(self, pdu: PDU, response: int) -> None:
        self._update_window()
        self._send(PDU(Opcode.TASK_MGMT_RESPONSE, flags=0x80, b2=response, itt=pdu.itt,
                       w24=self._next_statsn(), w28=self.exp_cmdsn, w32=self.max_cmdsn))
        if response == TMFResponse.COMPLETE and (pdu.flags & 0x7F) == TMF.TARGET_COLD_RESET:
            self._close("target cold reset")


def _lun_field(lun: int) -> bytes:
    return encode_lun(lun) if 0 <= lun < 16384 else bytes(8)


def _too_large() -> ScsiResult:
    """CHECK CONDITION, ILLEGAL REQUEST / INVALID FIELD IN CDB, fixed format."""
    sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0])
    return ScsiResult(Status.CHECK_CONDITION, None, sense)


_ORDERED_HANDLERS = {
    Opcode.SCSI_COMMAND: TargetConnection._scsi_command,
    Opcode.NOP_OUT: TargetConnection._nop_out,
    Opcode.TEXT_REQUEST: TargetConnection._text,
    Opcode.LOGOUT_REQUEST: TargetConnection._logout,
    Opcode.TASK_MGMT_REQUEST: TargetConnection._task_mgmt,
}

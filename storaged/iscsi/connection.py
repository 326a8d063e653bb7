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
from collections.abc import Callable
from typing import Any

from ..logfmt import with_log_fields
from ..scsi.types import Nexus, ScsiResult
from .conn_base import (
    _MASK,
    _WILDCARDS,
    ProtocolViolation,
    _PendingTMF,
    sn_le,
    sn_lt,
)
from .pdu import (
    PDU,
    RESERVED_TAG,
    DigestError,
    Opcode,
    PDUError,
    RejectReason,
    decode_lun,
    format_text,
    parse_text,
)
from .tasks import (
    TMF,
    CloseConnection,
    Event,
    ExecuteCommand,
    LoggedIn,
    ResetRequested,
    Task,
    TMFResponse,
)
from .writes import WritePath

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


class TargetConnection(WritePath):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the fields this connection's log lines carry (initiator, target: the login notes them)
        self.log_fields: dict[str, Any] = {}

    # --- public API ------------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self.session is not None

    @with_log_fields
    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> list[Event]:
        """Buffer received bytes and process every complete PDU."""
        if now is not None:
            self._last_rx = self._clock = now
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

    @with_log_fields
    def abort_tasks(self, lun: int | None) -> None:
        """Abort every task on ``lun`` (all LUNs if None): another session reset the LU or target,
        or this connection is gone."""
        for task in list(self.tasks.values()):
            if lun is None or task.lun == lun:
                self._abort(task)
        if lun is None:
            self.array_budget.forget(id(self))
        self._pump_grants()

    @with_log_fields
    def resume(self) -> list[Event]:
        """Retry writes waiting for budget (after :attr:`wake` was called)."""
        if not self.closed:
            self._pump_grants()
        return self._take_events()

    @with_log_fields
    def tick(self, now: float) -> list[Event]:
        """Drive timers: NOP-In pings on an idle link, dropping a link that stopped answering, and
        dropping one that holds write grants without sending the data its R2Ts asked for (at ERL 0
        the connection is the unit of recovery; the grants go back to the budgets)."""
        self._clock = now
        if self.session is None or self.closed:
            return self._take_events()
        for task in self.tasks.values():
            if task.r2ts and now - task.last_data > self.r2t_timeout:
                self._close(f"ITT {task.itt:#x}: no Data-Out for its R2T in {self.r2t_timeout:.0f}s")
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
            luns = self.portal.targets.get(target.name, target).luns  # now, not at login: a reload adds LUNs
            if luns is not None and lun not in luns:
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
            assert self.nexus is not None  # refused above otherwise
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



_ORDERED_HANDLERS: dict[int, Callable[[TargetConnection, PDU], None]] = {
    Opcode.SCSI_COMMAND: TargetConnection._scsi_command,
    Opcode.NOP_OUT: TargetConnection._nop_out,
    Opcode.TEXT_REQUEST: TargetConnection._text,
    Opcode.LOGOUT_REQUEST: TargetConnection._logout,
    Opcode.TASK_MGMT_REQUEST: TargetConnection._task_mgmt,
}

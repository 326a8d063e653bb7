"""SCSI commands and their Data-Out: admission into the task set, write-buffer grants, R2Ts.

A write is granted its whole Expected Data Transfer Length from the session and array budgets
before any of its data is asked for (or accepted unsolicited); its buffer then grows only as
data arrives. Writes that find no room wait in arrival order, holding nothing, with no R2T; a
write whose unsolicited data is already on its way gets TASK SET FULL or BUSY instead.
"""

from __future__ import annotations

import logging

from ..scsi.types import ScsiResult, Status
from .budget import take_both
from .conn_base import MAX_WRITE_BUFFER, ConnectionBase, ProtocolViolation, _lun_field
from .pdu import PDU, RESERVED_TAG, Opcode, RejectReason, decode_lun
from .tasks import ExecuteCommand, R2TState, Task

log = logging.getLogger(__name__)


class WritePath(ConnectionBase):
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
            task.last_data = self._clock
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
        task.last_data = self._clock
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



def _too_large() -> ScsiResult:
    """CHECK CONDITION, ILLEGAL REQUEST / INVALID FIELD IN CDB, fixed format."""
    sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0])
    return ScsiResult(Status.CHECK_CONDITION, None, sense)

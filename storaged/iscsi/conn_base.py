"""State and plumbing shared by the parts of the sans-IO target connection: sequence numbers,
the CmdSN window, the write budgets, sending responses (Data-In with status collapse).

:class:`~storaged.iscsi.writes.WritePath` adds SCSI commands and their data on top, and
:class:`~storaged.iscsi.connection.TargetConnection` the rest of the full feature phase.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..scsi.types import Nexus, ScsiResult, Status
from .budget import Budget
from .login import LoginMachine, LoginResult
from .params import SessionParams
from .pdu import PDU, RESERVED_TAG, Opcode, PDUReader, RejectReason, encode, encode_lun
from .portal import Portal
from .tasks import CloseConnection, Event, Task

log = logging.getLogger(__name__)

_MASK = 0xFFFFFFFF
#: Largest Expected Data Transfer Length we buffer for one write; beyond it the command fails.
MAX_WRITE_BUFFER = 64 << 20
#: Write data one session may have granted (asked for or accepted) at once, unless configured.
SESSION_WRITE_BUDGET = 32 << 20
_WILDCARDS = ("0.0.0.0", "::", "")
#: Seconds a write may hold an R2T without any of its data arriving before the link is dropped.
R2T_TIMEOUT = 30.0


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


class ConnectionBase:
    """What every part of the connection reads and writes; no request handling of its own."""

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
        r2t_timeout: float = R2T_TIMEOUT,
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
        self.r2t_timeout = r2t_timeout
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
        #: the latest time the owner told us (receive_data, tick): stamps R2Ts and data arrival
        self._clock = now
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

    def _task_finished(self, task: Task) -> None:
        """A task left the task set: answer TMFs and a logout that waited for it."""
        raise NotImplementedError


def _lun_field(lun: int) -> bytes:
    return encode_lun(lun) if 0 <= lun < 16384 else bytes(8)

"""What the sans-IO connection hands its owner (events) and what it keeps per command (tasks).

Kept apart from :mod:`storaged.iscsi.connection` so the protocol logic stays readable; the
connection module re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..scsi.types import Nexus, ScsiCommand, TaskAttr
from .login import LoginResult


class TMF:
    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TMFResponse:
    COMPLETE = 0
    NO_TASK = 1
    NO_LUN = 2
    REASSIGN_UNSUPPORTED = 4
    NOT_SUPPORTED = 5
    REJECTED = 255


# --- events ------------------------------------------------------------------------------


@dataclass(slots=True)
class LoggedIn:
    """Login finished: the owner registers the session (and reinstates an older one with its ISID)."""

    result: LoginResult
    nexus: Nexus | None


@dataclass(slots=True)
class ExecuteCommand:
    """A SCSI command is complete (all its data received, its turn in CmdSN order): run it and
    call :meth:`TargetConnection.command_done`."""

    task: Task


@dataclass(slots=True)
class ResetRequested:
    """LOGICAL UNIT RESET or a target reset: the owner resets LUs and aborts other sessions' tasks."""

    function: int
    lun: int
    nexus: Nexus


@dataclass(slots=True)
class CloseConnection:
    """Send what is queued, then close the socket."""

    reason: str
    #: True when the initiator logged out cleanly (not an error)
    clean: bool = False


Event = LoggedIn | ExecuteCommand | ResetRequested | CloseConnection


# --- tasks -------------------------------------------------------------------------------


@dataclass(slots=True)
class R2TState:
    offset: int
    length: int
    received: int = 0
    next_datasn: int = 0


@dataclass(slots=True, eq=False)
class Task:
    itt: int
    lun: int
    cdb: bytes
    cmdsn: int
    immediate: bool
    read: bool
    write: bool
    edtl: int
    attr: int
    #: Data-Out segments as they arrived, (buffer offset, bytes): memory follows the data sent,
    #: never the length the command claims
    parts: list[tuple[int, bytes | bytearray | memoryview]] = field(default_factory=list)
    received: int = 0
    #: write-buffer bytes granted from the session and array budgets (the whole EDTL, or 0 while
    #: the write waits for room)
    granted: int = 0
    #: holds one of the array's task slots
    counted: bool = False
    #: when an R2T was last sent or data last arrived for it (the connection's clock)
    last_data: float = 0.0
    unsol_limit: int = 0
    unsol_open: bool = False
    unsol_datasn: int = 0
    r2ts: dict[int, R2TState] = field(default_factory=dict)
    next_r2t_offset: int = 0
    r2tsn: int = 0
    executing: bool = False
    aborted: bool = False
    #: set by the owner to the running asyncio task, so a reset can wait for it
    handle: object | None = None

    def data_out(self) -> bytes | bytearray | memoryview:
        """The whole Data-Out buffer, joined once (in offset order) when the command runs."""
        parts = self.parts
        if len(parts) == 1 and parts[0][0] == 0:
            return parts[0][1]
        parts.sort(key=lambda p: p[0])
        data = b"".join(d for _, d in parts)
        self.parts = [(0, data)]
        return data

    def command(self, nexus: Nexus) -> ScsiCommand:
        data = self.data_out() if self.write else None
        return ScsiCommand(self.cdb, self.lun, nexus, data, self.edtl if self.read else 0,
                           TaskAttr(self.attr) if self.attr <= 4 else TaskAttr.SIMPLE, self.itt)

"""Types shared by the SCSI command set and its callers (iSCSI today, the remote link later).

The transport hands a :class:`ScsiCommand` to a :class:`~storaged.scsi.lu.LogicalUnit` and gets a
:class:`ScsiResult` back; nothing here knows about PDUs or sockets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """SAM-5 status codes."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class TaskAttr(enum.IntEnum):
    """Task attribute as carried in the iSCSI SCSI Command PDU (ATTR field)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: one initiator port talking to one target port.

    For iSCSI the initiator port is (initiator name, ISID); reservations, unit attentions and
    SPC-2 RESERVE are all tracked per nexus.
    """

    initiator: str
    isid: bytes
    target: str
    tpgt: int = 1

    @property
    def initiator_port(self) -> str:
        """iSCSI initiator port name as SPC-4 TransportID format 01b spells it."""
        return f"{self.initiator},i,0x{self.isid.hex()}"

    def transport_id(self) -> bytes:
        """SPC-4 iSCSI TransportID, format 01b (name + ISID), padded to a multiple of 4."""
        name = self.initiator_port.encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        return bytes([0x40 | 0x05, 0]) + len(name).to_bytes(2, "big") + name


@dataclass(slots=True)
class ScsiCommand:
    """One SCSI command as the target received it.

    ``data_out`` holds the whole Data-Out buffer (already reassembled by the transport) or is
    ``None`` for commands without one. ``expected_in`` is the initiator's Expected Data Transfer
    Length for a read-direction command; the LU may return more or less and the transport computes
    residuals.
    """

    cdb: bytes
    lun: int
    nexus: Nexus
    data_out: bytes | bytearray | memoryview | None = None
    expected_in: int = 0
    attr: TaskAttr = TaskAttr.SIMPLE
    tag: int = 0


@dataclass(slots=True)
class ScsiResult:
    """Outcome of a command: status, optional Data-In, optional sense bytes (fixed or descriptor)."""

    status: int = Status.GOOD
    data: bytes | bytearray | memoryview | None = None
    sense: bytes | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def good(cls, data: bytes | bytearray | memoryview | None = None) -> ScsiResult:
        return cls(Status.GOOD, data)

"""Why a command failed, and the sense bytes that say so.

Handlers never assemble sense data: they raise :class:`ScsiError` with a :class:`Reason`, and the
logical unit turns it into fixed (70h) or descriptor (72h) sense depending on the D_SENSE bit of its
Control mode page. One table maps every reason to its (sense key, ASC, ASCQ), in the manner of LIO's
``sense_detail_table``, so a reason is spelled the same way everywhere.
"""

from __future__ import annotations

import enum
import struct

# Sense keys (SPC-4 table 27).
NO_SENSE = 0x0
RECOVERED_ERROR = 0x1
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
COPY_ABORTED = 0xA
ABORTED_COMMAND = 0xB
MISCOMPARE = 0xE


class Reason(enum.Enum):
    """Every condition the command set reports through sense data."""

    NO_SENSE = enum.auto()
    INVALID_OPCODE = enum.auto()
    INVALID_FIELD_IN_CDB = enum.auto()
    INVALID_FIELD_IN_PARAM_LIST = enum.auto()
    INVALID_FIELD_IN_INFORMATION_UNIT = enum.auto()
    PARAM_LIST_LENGTH_ERROR = enum.auto()
    LBA_OUT_OF_RANGE = enum.auto()
    LUN_NOT_SUPPORTED = enum.auto()
    SAVING_PARAMS_NOT_SUPPORTED = enum.auto()
    INVALID_RELEASE_OF_PR = enum.auto()
    INSUFFICIENT_REGISTRATION_RESOURCES = enum.auto()
    TOO_MANY_TARGET_DESCRIPTORS = enum.auto()
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE = enum.auto()
    TOO_MANY_SEGMENT_DESCRIPTORS = enum.auto()
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE = enum.auto()
    MISCOMPARE_DURING_VERIFY = enum.auto()
    WRITE_PROTECTED = enum.auto()
    SPACE_ALLOC_FAILED = enum.auto()
    MEDIUM_ERROR = enum.auto()
    WRITE_ERROR = enum.auto()
    NOT_READY_COMM_FAILURE = enum.auto()
    COPY_TARGET_NOT_REACHABLE = enum.auto()
    # unit attentions
    POWER_ON_RESET = enum.auto()
    POWER_ON = enum.auto()
    BUS_DEVICE_RESET = enum.auto()
    MODE_PARAMETERS_CHANGED = enum.auto()
    RESERVATIONS_PREEMPTED = enum.auto()
    RESERVATIONS_RELEASED = enum.auto()
    REGISTRATIONS_PREEMPTED = enum.auto()
    CAPACITY_CHANGED = enum.auto()
    INQUIRY_DATA_CHANGED = enum.auto()
    REPORTED_LUNS_DATA_CHANGED = enum.auto()


#: reason -> (sense key, additional sense code, additional sense code qualifier)
SENSE_TABLE: dict[Reason, tuple[int, int, int]] = {
    Reason.NO_SENSE: (NO_SENSE, 0x00, 0x00),
    Reason.INVALID_OPCODE: (ILLEGAL_REQUEST, 0x20, 0x00),
    Reason.INVALID_FIELD_IN_CDB: (ILLEGAL_REQUEST, 0x24, 0x00),
    Reason.INVALID_FIELD_IN_PARAM_LIST: (ILLEGAL_REQUEST, 0x26, 0x00),
    Reason.INVALID_FIELD_IN_INFORMATION_UNIT: (ILLEGAL_REQUEST, 0x0E, 0x03),
    Reason.PARAM_LIST_LENGTH_ERROR: (ILLEGAL_REQUEST, 0x1A, 0x00),
    Reason.LBA_OUT_OF_RANGE: (ILLEGAL_REQUEST, 0x21, 0x00),
    Reason.LUN_NOT_SUPPORTED: (ILLEGAL_REQUEST, 0x25, 0x00),
    Reason.SAVING_PARAMS_NOT_SUPPORTED: (ILLEGAL_REQUEST, 0x39, 0x00),
    Reason.INVALID_RELEASE_OF_PR: (ILLEGAL_REQUEST, 0x26, 0x04),
    Reason.INSUFFICIENT_REGISTRATION_RESOURCES: (ILLEGAL_REQUEST, 0x55, 0x04),
    Reason.TOO_MANY_TARGET_DESCRIPTORS: (ILLEGAL_REQUEST, 0x26, 0x06),
    Reason.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE: (ILLEGAL_REQUEST, 0x26, 0x07),
    Reason.TOO_MANY_SEGMENT_DESCRIPTORS: (ILLEGAL_REQUEST, 0x26, 0x08),
    Reason.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE: (ILLEGAL_REQUEST, 0x26, 0x09),
    Reason.MISCOMPARE_DURING_VERIFY: (MISCOMPARE, 0x1D, 0x00),
    Reason.WRITE_PROTECTED: (DATA_PROTECT, 0x27, 0x00),
    Reason.SPACE_ALLOC_FAILED: (DATA_PROTECT, 0x27, 0x07),
    Reason.MEDIUM_ERROR: (MEDIUM_ERROR, 0x11, 0x00),
    Reason.WRITE_ERROR: (MEDIUM_ERROR, 0x0C, 0x00),
    Reason.NOT_READY_COMM_FAILURE: (NOT_READY, 0x08, 0x00),
    Reason.COPY_TARGET_NOT_REACHABLE: (COPY_ABORTED, 0x0D, 0x02),
    Reason.POWER_ON_RESET: (UNIT_ATTENTION, 0x29, 0x00),
    Reason.POWER_ON: (UNIT_ATTENTION, 0x29, 0x01),
    Reason.BUS_DEVICE_RESET: (UNIT_ATTENTION, 0x29, 0x03),
    Reason.MODE_PARAMETERS_CHANGED: (UNIT_ATTENTION, 0x2A, 0x01),
    Reason.RESERVATIONS_PREEMPTED: (UNIT_ATTENTION, 0x2A, 0x03),
    Reason.RESERVATIONS_RELEASED: (UNIT_ATTENTION, 0x2A, 0x04),
    Reason.REGISTRATIONS_PREEMPTED: (UNIT_ATTENTION, 0x2A, 0x05),
    Reason.CAPACITY_CHANGED: (UNIT_ATTENTION, 0x2A, 0x09),
    Reason.INQUIRY_DATA_CHANGED: (UNIT_ATTENTION, 0x3F, 0x03),
    Reason.REPORTED_LUNS_DATA_CHANGED: (UNIT_ATTENTION, 0x3F, 0x0E),
}


class ScsiError(Exception):
    """Raised by a handler to end the command with CHECK CONDITION.

    ``info`` fills the INFORMATION field (e.g. the miscompare offset). ``field`` is the byte offset
    of the offending field, in the CDB when ``in_cdb`` is true and in the parameter list otherwise;
    ``bit`` narrows it to a bit. Initiators (and libiscsi) use the field pointer to tell "this
    service action is not implemented" from "you sent a bad value".
    """

    __slots__ = ("reason", "info", "field", "bit", "in_cdb")

    def __init__(
        self,
        reason: Reason,
        info: int | None = None,
        field: int | None = None,
        bit: int | None = None,
        in_cdb: bool = True,
    ) -> None:
        super().__init__(reason.name)
        self.reason = reason
        self.info = info
        self.field = field
        self.bit = bit
        self.in_cdb = in_cdb


def cdb_error(field: int, bit: int | None = None) -> ScsiError:
    """INVALID FIELD IN CDB pointing at byte ``field`` (and ``bit``)."""
    return ScsiError(Reason.INVALID_FIELD_IN_CDB, field=field, bit=bit)


def param_error(field: int, bit: int | None = None) -> ScsiError:
    """INVALID FIELD IN PARAMETER LIST pointing at byte ``field`` of the Data-Out buffer."""
    return ScsiError(Reason.INVALID_FIELD_IN_PARAM_LIST, field=field, bit=bit, in_cdb=False)


class ReservationConflict(Exception):
    """Raised by a handler (PERSISTENT RESERVE OUT, RESERVE) to end with RESERVATION CONFLICT."""


def _sks(field: int | None, bit: int | None, in_cdb: bool) -> bytes | None:
    if field is None:
        return None
    b0 = 0x80 | (0x40 if in_cdb else 0)
    if bit is not None:
        b0 |= 0x08 | (bit & 7)
    return bytes((b0, (field >> 8) & 0xFF, field & 0xFF))


def fixed_sense(key: int, asc: int, ascq: int, info: int | None = None, sks: bytes | None = None) -> bytes:
    """Fixed-format (70h) sense, 18 bytes; INFORMATION only fits 32 bits."""
    buf = bytearray(18)
    buf[0] = 0x70
    buf[2] = key
    if info is not None and 0 <= info <= 0xFFFFFFFF:
        buf[0] |= 0x80  # VALID
        struct.pack_into(">I", buf, 3, info)
    buf[7] = 10
    buf[12] = asc
    buf[13] = ascq
    if sks is not None:
        buf[15:18] = sks
    return bytes(buf)


def descriptor_sense(
    key: int, asc: int, ascq: int, info: int | None = None, sks: bytes | None = None
) -> bytes:
    """Descriptor-format (72h) sense with optional Information and Sense-key-specific descriptors."""
    body = bytearray()
    if info is not None:
        body += bytes((0x00, 0x0A, 0x80, 0x00)) + struct.pack(">Q", info & 0xFFFFFFFFFFFFFFFF)
    if sks is not None:
        body += bytes((0x02, 0x06, 0x00, 0x00)) + sks + b"\x00"
    return bytes((0x72, key, asc, ascq, 0, 0, 0, len(body))) + bytes(body)


_cache: dict[tuple[Reason, bool], bytes] = {}


def build_sense(
    reason: Reason,
    descriptor: bool = False,
    info: int | None = None,
    field: int | None = None,
    bit: int | None = None,
    in_cdb: bool = True,
) -> bytes:
    """Sense bytes for ``reason``; plain ones are cached since UAs and range errors repeat a lot."""
    plain = info is None and field is None
    if plain:
        cached = _cache.get((reason, descriptor))
        if cached is not None:
            return cached
    key, asc, ascq = SENSE_TABLE[reason]
    sks = _sks(field, bit, in_cdb)
    out = (descriptor_sense if descriptor else fixed_sense)(key, asc, ascq, info, sks)
    if plain:
        _cache[(reason, descriptor)] = out
    return out


def sense_of_error(err: ScsiError, descriptor: bool) -> bytes:
    return build_sense(err.reason, descriptor, err.info, err.field, err.bit, err.in_cdb)


def parse_sense(sense: bytes) -> tuple[int, int, int]:
    """(key, asc, ascq) from fixed or descriptor sense; for tests and logging."""
    code = sense[0] & 0x7F
    if code in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2], sense[3]
    return sense[2] & 0x0F, sense[12], sense[13]

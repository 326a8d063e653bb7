"""The command device interface (spec Fig. 6) as an on-disk block format, shared by array and host.

A command device is a LUN divided into fixed-size slots. Slot 0 is the directory (read-only: the
layout and which slots are busy); slots 1..N each carry one command at a time. The host writes a
command block at the start of a slot; the array executes it and, from then on, reading the slot
returns a response block with the status and the edited data; the host frees the slot by writing
a release block. All integers are big-endian. ``docs/command-device.md`` is the prose version.

Command block (host -> array), 32-byte header then the input parameter::

    0  4  magic b"SDCB"            16  2  process number (which command)
    4  2  format version (1)       18  2  reserved (0)
    6  2  flags: bit 0 = edited    20  4  input length (bytes after the header)
          data wanted (Fig. 6)     24  4  CRC32C of the header (this field as 0) and the input
    8  8  tag (host-chosen)        28  4  reserved (0)

Response block (array -> host), 40-byte header, then error text, then edited data::

    0  4  magic b"SDRB"            20  4  error text length
    4  2  format version (1)       24  4  edited data length
    6  2  slot state (SlotState)   28  4  CRC32C of header (this field as 0), error text, data
    8  8  tag of the command       32  8  reserved (0)
    16 2  process number
    18 2  result status (ResultStatus)

Release block (host -> array): magic b"SDRL", version, 2 reserved bytes, the tag (8 bytes).

The input parameter and the edited data are UTF-8 JSON objects: readable in a hex dump, and new
fields do not need a new format version.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import crc32c as _crc32c

VERSION = 1
COMMAND_MAGIC = b"SDCB"
RESPONSE_MAGIC = b"SDRB"
RELEASE_MAGIC = b"SDRL"
DIRECTORY_MAGIC = b"SDCD"

COMMAND_HEADER = struct.Struct(">4sHHQHHIII")  # 32 bytes
RESPONSE_HEADER = struct.Struct(">4sHHQHHIII8s")  # 40 bytes
RELEASE_BLOCK = struct.Struct(">4sHHQ")  # 16 bytes
DIRECTORY_HEADER = struct.Struct(">4sHHIII")  # 20 bytes: magic, version, reserved, slot size, slots, CRC

FLAG_EDITED_DATA = 0x0001

#: default geometry: 256 KiB slots; a 16 MiB command device has 63 command slots
DEFAULT_SLOT_SIZE = 256 * 1024


class SlotState(enum.IntEnum):
    FREE = 0  # nothing here (or it belongs to no one)
    PENDING = 1  # received, executing
    DONE = 2  # result ready: read it, then release
    BUSY_OTHER = 3  # another initiator owns this slot; pick another one
    INCOMPLETE = 4  # part of a command arrived; waiting for the rest


class ResultStatus(enum.IntEnum):
    OK = 0
    BAD_BLOCK = 1  # magic, version, length or checksum wrong: not executed
    UNKNOWN_PROCESS = 2  # no command with this process number
    BAD_PARAMETER = 3  # the input parameter is not what the command needs
    NOT_ALLOWED = 4  # this initiator may not issue commands here
    FAILED = 5  # the command ran and failed; the error text says why
    WRONG_STATE = 6  # the object is in a state where this is not allowed (e.g. pair state)
    UNREACHABLE = 7  # a peer array needed by the command cannot be reached
    DUPLICATE = 8  # this tag was already executed and its result released; not run again
    BUSY = 9  # the array cannot take the command now (e.g. all slots busy)


class BlockError(ValueError):
    """A block that does not parse: the reason is meant for a person."""


def crc32c(*parts: bytes | bytearray | memoryview) -> int:
    value = 0
    for p in parts:
        value = _crc32c.crc32c(p, value)
    return value


@dataclass(slots=True)
class Command:
    process: int
    tag: int
    params: dict[str, Any] = field(default_factory=dict)
    edited_data: bool = True

    def encode(self) -> bytes:
        payload = json.dumps(self.params, separators=(",", ":"), sort_keys=True).encode()
        flags = FLAG_EDITED_DATA if self.edited_data else 0
        header = COMMAND_HEADER.pack(COMMAND_MAGIC, VERSION, flags, self.tag, self.process, 0, len(payload), 0, 0)
        crc = crc32c(header, payload)
        return COMMAND_HEADER.pack(COMMAND_MAGIC, VERSION, flags, self.tag, self.process, 0, len(payload), crc,
                                   0) + payload


@dataclass(slots=True)
class CommandHeader:
    """What can be read from a command header before the whole block has arrived."""

    version: int
    flags: int
    tag: int
    process: int
    input_length: int
    crc: int

    @property
    def total_length(self) -> int:
        return COMMAND_HEADER.size + self.input_length


def peek_command_header(data: bytes | bytearray | memoryview, max_input: int) -> CommandHeader | None:
    """Parse a command header; None if it is not a command block at all (no magic)."""
    if len(data) < COMMAND_HEADER.size or bytes(data[:4]) != COMMAND_MAGIC:
        return None
    magic, version, flags, tag, process, _r, length, crc, _r2 = COMMAND_HEADER.unpack_from(data)
    if version != VERSION:
        raise BlockError(f"command block version {version} is not supported (this array speaks {VERSION})")
    if length > max_input:
        raise BlockError(f"input parameter of {length} bytes exceeds the slot ({max_input} bytes)")
    return CommandHeader(version, flags, tag, process, length, crc)


def decode_command(data: bytes | bytearray | memoryview, max_input: int) -> Command:
    """Parse and verify a complete command block; BlockError says what is wrong."""
    hdr = peek_command_header(data, max_input)
    if hdr is None:
        raise BlockError("not a command block (bad magic)")
    if len(data) < hdr.total_length:
        raise BlockError(f"command block truncated: {len(data)} of {hdr.total_length} bytes")
    raw = bytes(data[: hdr.total_length])
    zeroed = raw[:24] + b"\0\0\0\0" + raw[28:32]
    if crc32c(zeroed, raw[32:]) != hdr.crc:
        raise BlockError("command block checksum mismatch")
    try:
        params = json.loads(raw[32:]) if hdr.input_length else {}
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, over-long integers, deep nesting
        raise BlockError(f"input parameter is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise BlockError("input parameter must be a JSON object")
    return Command(hdr.process, hdr.tag, params, bool(hdr.flags & FLAG_EDITED_DATA))


@dataclass(slots=True)
class Response:
    state: SlotState
    tag: int = 0
    process: int = 0
    status: ResultStatus = ResultStatus.OK
    error: str = ""
    data: dict[str, Any] | None = None

    def encode(self, limit: int | None = None) -> bytes:
        err = self.error.encode()
        payload = b"" if self.data is None else json.dumps(self.data, separators=(",", ":"),
                                                           sort_keys=True).encode()
        if limit is not None and RESPONSE_HEADER.size + len(err) + len(payload) > limit:
            err = f"edited data of {len(payload)} bytes does not fit the slot".encode()
            payload = b""
            status = ResultStatus.FAILED
        else:
            status = self.status
        fields = (RESPONSE_MAGIC, VERSION, self.state, self.tag, self.process, status, len(err), len(payload))
        crc = crc32c(RESPONSE_HEADER.pack(*fields, 0, bytes(8)), err, payload)
        return RESPONSE_HEADER.pack(*fields, crc, bytes(8)) + err + payload


def decode_response(data: bytes | bytearray | memoryview) -> Response:
    if len(data) < RESPONSE_HEADER.size or bytes(data[:4]) != RESPONSE_MAGIC:
        raise BlockError("not a response block (bad magic): is this LUN a command device?")
    magic, version, state, tag, process, status, elen, dlen, crc, _r = RESPONSE_HEADER.unpack_from(data)
    if version != VERSION:
        raise BlockError(f"response block version {version} is not supported (expected {VERSION})")
    end = RESPONSE_HEADER.size + elen + dlen
    if len(data) < end:
        raise BlockError(f"response block truncated: {len(data)} of {end} bytes")
    raw = bytes(data[:end])
    if crc32c(raw[:28] + b"\0\0\0\0" + raw[32:40], raw[40:]) != crc:
        raise BlockError("response block checksum mismatch")
    error = raw[40 : 40 + elen].decode("utf-8", "replace")
    payload = raw[40 + elen : end]
    try:
        result = json.loads(payload) if dlen else None
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, over-long integers, deep nesting
        raise BlockError(f"edited data is not JSON: {exc}") from None
    if state not in SlotState._value2member_map_:
        raise BlockError(f"response block has an unknown slot state {state}")
    if status not in ResultStatus._value2member_map_:
        raise BlockError(f"response block has an unknown result status {status}")
    return Response(SlotState(state), tag, process, ResultStatus(status), error, result)


def encode_release(tag: int) -> bytes:
    return RELEASE_BLOCK.pack(RELEASE_MAGIC, VERSION, 0, tag)


def decode_release(data: bytes | bytearray | memoryview) -> int | None:
    """The tag of a release block, or None if the data is not one."""
    if len(data) < RELEASE_BLOCK.size or bytes(data[:4]) != RELEASE_MAGIC:
        return None
    _m, version, _r, tag = RELEASE_BLOCK.unpack_from(data)
    if version != VERSION:
        raise BlockError(f"release block version {version} is not supported")
    return int(tag)


@dataclass(slots=True)
class Directory:
    """Slot 0: the geometry, and the state of each command slot as the reader sees it.

    ``states[i]`` is the state of slot ``i + 1``; slots owned by another initiator read as
    BUSY_OTHER, so a host can pick a free one without learning who holds the others.
    """

    slot_size: int
    slots: int
    states: list[SlotState]

    def encode(self) -> bytes:
        body = bytes(self.states)
        hdr = DIRECTORY_HEADER.pack(DIRECTORY_MAGIC, VERSION, 0, self.slot_size, self.slots, 0)
        crc = crc32c(hdr, body)
        return DIRECTORY_HEADER.pack(DIRECTORY_MAGIC, VERSION, 0, self.slot_size, self.slots, crc) + body


def decode_directory(data: bytes | bytearray | memoryview) -> Directory:
    if len(data) < DIRECTORY_HEADER.size or bytes(data[:4]) != DIRECTORY_MAGIC:
        raise BlockError("not a command device (no directory in slot 0)")
    _m, version, _r, slot_size, slots, crc = DIRECTORY_HEADER.unpack_from(data)
    if version != VERSION:
        raise BlockError(f"command device format version {version} is not supported")
    body = bytes(data[DIRECTORY_HEADER.size : DIRECTORY_HEADER.size + slots])
    if len(body) < slots:
        raise BlockError("directory truncated")
    raw = bytes(data[: DIRECTORY_HEADER.size - 4]) + b"\0\0\0\0"
    if crc32c(raw, body) != crc:
        raise BlockError("directory checksum mismatch")
    return Directory(slot_size, slots, [SlotState(b) if b in SlotState._value2member_map_ else SlotState.BUSY_OTHER
                                        for b in body])

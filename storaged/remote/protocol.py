"""Sans-IO wire format of the remote link: frames in and out as bytes, no sockets.

Like h11, nothing here touches the network: :class:`~storaged.remote.reader.FrameReader` turns
received bytes into :class:`Frame` objects and ``encode_*`` functions turn requests into lists of
buffers for one ``writelines()``. The connection code in :mod:`storaged.remote.connection` only
moves bytes, so the codec is tested and fuzzed without an event loop.

Every frame is a fixed 28-byte header followed by ``length`` payload bytes::

    magic "SDRL" | version u8 | type u8 | opcode u8 | flags u8 | status u16 | reserved u16
    | request id u64 | payload length u32 | CRC32C u32

The CRC32C covers the first 24 header bytes and the payload, so a corrupted length, request id
or data block is caught before it reaches a volume. After the handshake a 16-byte tag follows
the header of every frame (:mod:`storaged.remote.integrity`): the CRC catches accidents, the tag
attacks. All integers are big-endian. Decoding is in :mod:`storaged.remote.reader`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

from crc32c import crc32c

from ..backstore.base import BackstoreError, BackstoreFull, BackstoreUnavailable, Extent

Buffer: TypeAlias = bytes | bytearray | memoryview

MAGIC = b"SDRL"
#: protocol versions this build speaks; the handshake picks the highest both sides support
#: v2 added a tag to every frame after the handshake; v1 peers are refused (UNSUPPORTED_VERSION)
MIN_VERSION = 2
MAX_VERSION = 2

_HEAD = struct.Struct(">4sBBBBHHQI")  # everything the CRC covers before the payload
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size  # 28

#: largest READ/WRITE data block in one frame; the client splits bigger transfers
MAX_IO = 16 << 20
#: largest payload a reader accepts: one data block plus its request header (target and origin
#: strings are capped so the header always fits in the slack)
MAX_PAYLOAD = MAX_IO + 64 * 1024
MAX_NAME = 4096  # bytes of a target name or origin string
#: compare-and-write carries two blocks; SCSI limits it to a few blocks anyway
MAX_COMPARE = MAX_IO // 2

FLAG_FUA = 0x01


class FrameType(IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    AUTH = 3
    AUTH_OK = 4
    REQUEST = 5
    RESPONSE = 6
    PING = 7
    PONG = 8
    #: connection-level error, always followed by a close; status OK means an orderly GOAWAY
    ERROR = 9
    GOAWAY = 9


class Opcode(IntEnum):
    NONE = 0
    OPEN_VOLUME = 1
    READ = 2
    WRITE = 3
    FLUSH = 4
    UNMAP = 5
    WRITE_ZEROES = 6
    EXTENTS = 7
    COMPARE_AND_WRITE = 8
    CALL = 9


class Status(IntEnum):
    """Outcome of a request (RESPONSE) or the reason for closing (ERROR)."""

    OK = 0
    NOT_FOUND = 1  # no such volume / LUN
    BAD_REQUEST = 2  # malformed payload, out-of-range offset, bad frame
    IO_ERROR = 3  # BackstoreError: MEDIUM ERROR on the host side
    NO_SPACE = 4  # BackstoreFull: SPACE ALLOCATION FAILED
    UNAVAILABLE = 5  # BackstoreUnavailable: NOT READY (the peer's own backing store is away)
    NOT_ALLOWED = 6  # the peer refused (permissions, command device policy)
    TIMEOUT = 7  # the peer gave up on something it waited for
    INTERNAL = 8  # an unexpected exception inside the peer
    WRONG_STATE = 9  # a frame not valid at this point of the connection
    UNSUPPORTED_VERSION = 10  # no common protocol version
    AUTH_FAILED = 11  # unknown array or wrong secret
    INTEGRITY_FAILED = 12  # a frame after the handshake had a wrong tag (see integrity.py)


_FRAME_TYPES = frozenset(int(t) for t in FrameType)
#: the only frames legal before the handshake is done
HANDSHAKE_TYPES = frozenset({FrameType.HELLO, FrameType.HELLO_ACK, FrameType.AUTH, FrameType.AUTH_OK,
                             FrameType.ERROR})
#: largest payload accepted before the handshake is done: a HELLO with the longest legal names
#: and JSON escapes fits in it; a peer that has not authenticated cannot make us buffer more
PREAUTH_MAX_PAYLOAD = 8192


class ProtocolError(Exception):
    """The byte stream is not a valid frame sequence; the connection must be closed."""

    def __init__(self, message: str, status: Status = Status.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Frame:
    type: FrameType
    opcode: int = 0
    flags: int = 0
    status: int = 0
    request_id: int = 0
    payload: bytes = b""
    version: int = MAX_VERSION


# --- encoding -------------------------------------------------------------------------------


def encode_frame(ftype: FrameType, *, opcode: int = 0, flags: int = 0, status: int = 0,
                 request_id: int = 0, payload: Buffer | Sequence[Buffer] = (),
                 version: int = MAX_VERSION) -> list[Buffer]:
    """Header plus the payload parts, uncopied, ready for ``transport.writelines``."""
    parts: list[Buffer]
    if isinstance(payload, (bytes, bytearray, memoryview)):
        parts = [payload] if len(payload) else []
    else:
        parts = [p for p in payload if len(p)]
    length = sum(len(p) for p in parts)
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    head = _HEAD.pack(MAGIC, version, ftype, opcode, flags, status, 0, request_id, length)
    crc = crc32c(head)
    for p in parts:
        crc = crc32c(p, crc)
    return [head + _CRC.pack(crc), *parts]


def encode_error(status: int, message: str, *, request_id: int = 0, version: int = MAX_VERSION) -> list[Buffer]:
    """An ERROR frame (GOAWAY when ``status`` is OK); the sender closes right after it."""
    return encode_frame(FrameType.ERROR, status=status, request_id=request_id,
                        payload=message.encode()[:1024], version=version)


def encode_response(opcode: int, request_id: int, status: int = Status.OK,
                    payload: Buffer | Sequence[Buffer] = (), *, version: int = MAX_VERSION) -> list[Buffer]:
    return encode_frame(FrameType.RESPONSE, opcode=opcode, status=status, request_id=request_id,
                        payload=payload, version=version)


def error_message(payload: Buffer) -> str:
    return bytes(payload[:1024]).decode("utf-8", "replace")


# --- data-op requests -----------------------------------------------------------------------

#: offset u64 | length u64 | lun u32 | target length u16 | origin length u16, then the two strings
_DATA = struct.Struct(">QQIHH")
DATA_HEADER_SIZE = _DATA.size

#: opcodes whose payload is a data header (and maybe data) rather than JSON
DATA_OPCODES = frozenset({Opcode.READ, Opcode.WRITE, Opcode.FLUSH, Opcode.UNMAP, Opcode.WRITE_ZEROES,
                          Opcode.EXTENTS, Opcode.COMPARE_AND_WRITE})


@dataclass(frozen=True, slots=True)
class DataRequest:
    """A decoded data-op request. ``data`` is WRITE's block, or COMPARE_AND_WRITE's expected
    block followed by the new block (each ``length`` bytes); a view, not a copy."""

    target: str
    lun: int
    origin: str
    offset: int
    length: int
    data: memoryview

    @property
    def expected(self) -> memoryview:
        return self.data[: self.length]

    @property
    def new_data(self) -> memoryview:
        return self.data[self.length :]


def encode_data_header(target: str, lun: int, origin: str, offset: int, length: int) -> bytes:
    """The header every data op starts with; WRITE/COMPARE_AND_WRITE data goes in separate parts."""
    t, o = target.encode(), origin.encode()
    if len(t) > MAX_NAME or len(o) > MAX_NAME:
        raise ValueError("target name or origin too long")
    if not (0 <= lun < 1 << 32 and 0 <= offset < 1 << 64 and 0 <= length < 1 << 64):
        raise ValueError("lun, offset or length out of range")
    return _DATA.pack(offset, length, lun, len(t), len(o)) + t + o


def decode_data_request(opcode: int, payload: Buffer) -> DataRequest:
    """Parse and check a data-op payload; raises ProtocolError (answered with BAD_REQUEST)."""
    mv = memoryview(payload)
    if len(mv) < _DATA.size:
        raise ProtocolError("data request shorter than its header")
    offset, length, lun, tlen, olen = _DATA.unpack_from(mv)
    end = _DATA.size + tlen + olen
    if tlen > MAX_NAME or olen > MAX_NAME or len(mv) < end:
        raise ProtocolError("bad target/origin length")
    try:
        target = bytes(mv[_DATA.size : _DATA.size + tlen]).decode()
        origin = bytes(mv[_DATA.size + tlen : end]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("target or origin is not UTF-8") from None
    data = mv[end:]
    if opcode == Opcode.WRITE:
        want = length
        if length > MAX_IO:
            raise ProtocolError("write larger than MAX_IO")
    elif opcode == Opcode.COMPARE_AND_WRITE:
        if length > MAX_COMPARE:
            raise ProtocolError("compare-and-write too large")
        want = 2 * length
    else:
        want = 0
        if opcode == Opcode.READ and length > MAX_IO:
            raise ProtocolError("read larger than MAX_IO")
    if len(data) != want:
        raise ProtocolError(f"{Opcode(opcode).name if opcode in Opcode._value2member_map_ else opcode}: "
                            f"{len(data)} data bytes, expected {want}")
    return DataRequest(target, lun, origin, offset, length, data)


# --- small response bodies ------------------------------------------------------------------

_EXTENT = struct.Struct(">QQB")
_COUNT = struct.Struct(">I")
_CAW = struct.Struct(">q")


def encode_extents(extents: Iterable[Extent]) -> bytes:
    """count u32, then offset u64 | length u64 | mapped u8 per extent."""
    items = list(extents)
    out = bytearray(_COUNT.pack(len(items)))
    for e in items:
        out += _EXTENT.pack(e.offset, e.length, 1 if e.mapped else 0)
    return bytes(out)


def decode_extents(payload: Buffer) -> list[Extent]:
    mv = memoryview(payload)
    if len(mv) < _COUNT.size:
        raise ProtocolError("extent list too short")
    (count,) = _COUNT.unpack_from(mv)
    if len(mv) != _COUNT.size + count * _EXTENT.size:
        raise ProtocolError("extent list length does not match its count")
    return [Extent(o, n, bool(m)) for o, n, m in _EXTENT.iter_unpack(mv[_COUNT.size :])]


def encode_caw_result(first_difference: int) -> bytes:
    return _CAW.pack(first_difference)


def decode_caw_result(payload: Buffer) -> int:
    if len(payload) != _CAW.size:
        raise ProtocolError("compare-and-write result must be 8 bytes")
    return int(_CAW.unpack(payload)[0])


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(payload: Buffer) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"bad JSON payload: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload must be an object")
    return obj


# --- exceptions <-> statuses ----------------------------------------------------------------


def status_for_exception(exc: BaseException) -> Status:
    """The status a server answers when a volume or handler raised ``exc``."""
    from .api import RemoteError

    if isinstance(exc, RemoteError):
        try:
            return Status(exc.status)
        except ValueError:
            return Status.INTERNAL
    if isinstance(exc, BackstoreFull):
        return Status.NO_SPACE
    if isinstance(exc, BackstoreUnavailable):
        return Status.UNAVAILABLE
    if isinstance(exc, BackstoreError):
        return Status.IO_ERROR
    if isinstance(exc, ProtocolError):
        return Status.BAD_REQUEST
    if isinstance(exc, PermissionError):
        return Status.NOT_ALLOWED
    if isinstance(exc, TimeoutError):
        return Status.TIMEOUT
    return Status.INTERNAL


def backstore_error(exc: BaseException) -> BackstoreError:
    """What a remote-backed store should raise for a link failure, so the SCSI layer reports the
    same sense as for a local store: NO_SPACE -> BackstoreFull (SPACE ALLOCATION FAILED); a link
    down/timeout or UNAVAILABLE -> BackstoreUnavailable (NOT READY); anything else -> BackstoreError
    (MEDIUM ERROR). Callers may special-case NOT_FOUND/NOT_ALLOWED/BAD_REQUEST first."""
    from .api import LinkDown, LinkTimeout, RemoteError

    if isinstance(exc, BackstoreError):
        return exc
    if isinstance(exc, RemoteError):
        if exc.status == Status.NO_SPACE:
            return BackstoreFull(exc.message)
        if exc.status in (Status.UNAVAILABLE, Status.TIMEOUT):
            return BackstoreUnavailable(exc.message)
        return BackstoreError(f"{_status_name(exc.status)}: {exc.message}")
    if isinstance(exc, (LinkDown, LinkTimeout)):
        return BackstoreUnavailable(str(exc))
    return BackstoreError(str(exc))


def _status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"

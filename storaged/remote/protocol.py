"""Sans-IO wire format of the remote link: frames in and out as bytes, no sockets.

Like h11, nothing here touches the network: :class:`FrameReader` turns received bytes into
:class:`Frame` objects and ``encode_*`` functions turn requests into lists of buffers for one
``writelines()``. The connection code in :mod:`storaged.remote.link` only moves bytes, so the codec
is tested and fuzzed without an event loop.

Every frame is a fixed 28-byte header followed by ``length`` payload bytes::

    magic "SDRL" | version u8 | type u8 | opcode u8 | flags u8 | status u16 | reserved u16
    | request id u64 | payload length u32 | CRC32C u32

The CRC32C covers the first 24 header bytes and the payload, so a corrupted length, request id
or data block is caught before it reaches a volume. All integers are big-endian.
"""

from __future__ import annotations

import io
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
MIN_VERSION = 1
MAX_VERSION = 1

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


_FRAME_TYPES = frozenset(int(t) for t in FrameType)


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


# --- decoding -------------------------------------------------------------------------------


class FrameReader:
    """Reassembles frames from a byte stream.

    Feed it with :meth:`feed` (any transport) or :meth:`get_buffer`/:meth:`buffer_updated` (an
    ``asyncio.BufferedProtocol``): for a large payload the reader hands out a view of the payload
    object itself, so the socket reads straight into the bytes a READ returns (no copy).
    :meth:`next_frame` decodes one frame and never looks past it, so a connection that stops
    calling it (backpressure) leaves the rest unparsed, and a version pinned after the handshake
    applies to the very next frame. Any error is final: the stream cannot be resynchronised.
    """

    #: payloads at least this big are received directly into their own buffer
    DIRECT_THRESHOLD = 64 * 1024
    SCRATCH = 256 * 1024

    def __init__(self, version: int | None = None, max_payload: int = MAX_PAYLOAD) -> None:
        #: the only protocol version accepted; None (before the handshake) accepts any
        self.version = version
        self.max_payload = max_payload
        self._buf = bytearray()
        self._scratch = bytearray(self.SCRATCH)
        self._error: ProtocolError | None = None
        # a large payload being received in place
        self._head = b""
        self._bio: io.BytesIO | None = None
        self._view: memoryview | None = None
        self._filled = 0
        self._direct_handed = False
        self._ready: Frame | None = None  # a payload completed in place, not yet returned

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) + self._filled + (len(self._ready.payload) + HEADER_SIZE if self._ready else 0)

    @property
    def payload_complete(self) -> bool:
        """A payload received in place is complete. The transport may still hold the view it read
        into until its callback returns; calling :meth:`next_frame` after that lets the payload
        be handed out without a copy (``BytesIO.getvalue`` copies while any view is alive)."""
        return self._view is not None and self._filled == len(self._view)

    def feed(self, data: Buffer) -> None:
        mv = memoryview(data).cast("B")
        if self._view is not None:
            n = min(len(mv), len(self._view) - self._filled)
            self._view[self._filled : self._filled + n] = mv[:n]
            self._filled += n
            mv = mv[n:]
        if len(mv):
            self._buf += mv

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self.payload_complete:
            # the transport dropped the view it read into (it wants a new buffer): hand the
            # payload over now, without a copy, though next_frame() has not been called yet
            self._complete_direct()
        if self._view is not None and self._filled < len(self._view):
            self._direct_handed = True
            return self._view[self._filled :]
        self._direct_handed = False
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct_handed:
            self._filled += nbytes
        else:
            self._buf += memoryview(self._scratch)[:nbytes]

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed; raises ProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as e:
            self._error = e
            self._drop_direct()
            self._buf = bytearray()
            raise

    def _complete_direct(self) -> None:
        assert self._view is not None and self._bio is not None
        head = self._head
        self._view.release()
        self._view = None
        payload = self._bio.getvalue()  # the buffer itself when no other view is alive
        self._bio = None
        self._filled = 0
        try:
            self._ready = self._finish(head, payload)
        except ProtocolError as e:
            self._error = e

    def _next(self) -> Frame | None:
        if self.payload_complete:
            self._complete_direct()
            if self._error is not None:
                raise self._error
        if self._ready is not None:
            frame, self._ready = self._ready, None
            return frame
        if self._view is not None:
            return None
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        length = self._check_header(buf)
        total = HEADER_SIZE + length
        if len(buf) >= total:
            head = bytes(buf[:HEADER_SIZE])
            payload = bytes(buf[HEADER_SIZE:total])
            del buf[:total]
            return self._finish(head, payload)
        if length >= self.DIRECT_THRESHOLD:
            self._head = bytes(buf[:HEADER_SIZE])
            bio = io.BytesIO()
            bio.seek(length - 1)
            bio.write(b"\0")
            self._bio = bio
            self._view = bio.getbuffer()
            have = len(buf) - HEADER_SIZE
            self._view[:have] = buf[HEADER_SIZE:]
            self._filled = have
            buf.clear()
        return None

    def _check_header(self, buf: Buffer) -> int:
        magic, version, ftype, _op, _fl, _st, _rsv, _rid, length = _HEAD.unpack_from(buf)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {bytes(magic)!r}")
        if self.version is not None and version != self.version:
            raise ProtocolError(f"frame version {version}, connection speaks {self.version}",
                                Status.UNSUPPORTED_VERSION)
        if ftype not in _FRAME_TYPES:
            raise ProtocolError(f"unknown frame type {ftype}")
        if length > self.max_payload:
            raise ProtocolError(f"payload of {length} bytes exceeds {self.max_payload}")
        return int(length)

    def _finish(self, head: bytes, payload: bytes) -> Frame:
        (want,) = _CRC.unpack_from(head, _HEAD.size)
        got = crc32c(payload, crc32c(memoryview(head)[: _HEAD.size]))
        if got != want:
            raise ProtocolError(f"CRC32C mismatch (frame {want:#010x}, computed {got:#010x})")
        _m, version, ftype, opcode, flags, status, _r, rid, _len = _HEAD.unpack_from(head)
        return Frame(FrameType(ftype), opcode, flags, status, rid, payload, version)

    def _drop_direct(self) -> None:
        if self._view is not None:
            self._view.release()
        self._view = None
        self._bio = None
        self._filled = 0


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

"""iSCSI PDU codec (RFC 7143 section 11): bytes <-> PDU objects, digests, framing. No I/O.

Every PDU shares one 48-byte Basic Header Segment layout: four bytes of opcode and flags, the
AHS and data lengths, eight LUN/opcode-specific bytes, the Initiator Task Tag and seven more
32-bit words whose meaning depends on the opcode. :class:`PDU` keeps those words by offset and
the opcode-specific helpers name them, so one ``struct`` call decodes any header.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import crc32c as _crc32c

BHS_LEN = 48
RESERVED_TAG = 0xFFFFFFFF
#: The 24-bit DataSegmentLength bound: no PDU may carry more.
MAX_DATA_SEGMENT = (1 << 24) - 1

_BHS = struct.Struct(">BBBBI8sIIIIIIII")
_U32 = struct.Struct(">I")


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C as iSCSI uses it for header and data digests (sent little-endian)."""
    return _crc32c.crc32c(data, value)


class Opcode(enum.IntEnum):
    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset(
    {
        Opcode.NOP_OUT,
        Opcode.SCSI_COMMAND,
        Opcode.TASK_MGMT_REQUEST,
        Opcode.LOGIN_REQUEST,
        Opcode.TEXT_REQUEST,
        Opcode.DATA_OUT,
        Opcode.LOGOUT_REQUEST,
        Opcode.SNACK_REQUEST,
    }
)


class RejectReason(enum.IntEnum):
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    OUT_OF_RESOURCES = 0x0A
    WAITING_FOR_LOGOUT = 0x0C


class PDUError(Exception):
    """A framing error: the byte stream can no longer be trusted, so the connection must close."""


@dataclass(slots=True)
class PDU:
    """One PDU: the header words by offset, the AHS and the data segment (without padding)."""

    opcode: int
    flags: int = 0
    immediate: bool = False
    b2: int = 0
    b3: int = 0
    lun: bytes = bytes(8)
    itt: int = RESERVED_TAG
    w20: int = 0
    w24: int = 0
    w28: int = 0
    w32: int = 0
    w36: int = 0
    w40: int = 0
    w44: int = 0
    ahs: bytes = b""
    data: bytes | bytearray | memoryview = b""
    #: the raw 48 header bytes as received (kept for Reject, which echoes them)
    raw_header: bytes = field(default=b"", repr=False)

    @property
    def final(self) -> bool:
        return bool(self.flags & 0x80)

    # Field names shared by several opcodes (RFC 7143 section 11).
    @property
    def cmdsn(self) -> int:
        return self.w24

    @property
    def exp_statsn(self) -> int:
        return self.w28

    @property
    def ttt(self) -> int:
        return self.w20

    def header_bytes(self) -> bytes:
        """Encode the 48-byte BHS for this PDU."""
        b0 = (self.opcode & 0x3F) | (0x40 if self.immediate else 0)
        return _BHS.pack(
            b0,
            self.flags & 0xFF,
            self.b2 & 0xFF,
            self.b3 & 0xFF,
            ((len(self.ahs) // 4) << 24) | len(self.data),
            self.lun,
            self.itt,
            self.w20 & 0xFFFFFFFF,
            self.w24 & 0xFFFFFFFF,
            self.w28 & 0xFFFFFFFF,
            self.w32 & 0xFFFFFFFF,
            self.w36 & 0xFFFFFFFF,
            self.w40 & 0xFFFFFFFF,
            self.w44 & 0xFFFFFFFF,
        )


def decode_bhs(header: bytes | bytearray | memoryview) -> tuple[PDU, int, int]:
    """Decode a 48-byte BHS; return the PDU (without AHS/data) and the AHS and data lengths."""
    (b0, flags, b2, b3, lengths, lun, itt, w20, w24, w28, w32, w36, w40, w44) = _BHS.unpack_from(header)
    pdu = PDU(b0 & 0x3F, flags, bool(b0 & 0x40), b2, b3, lun, itt, w20, w24, w28, w32, w36, w40, w44)
    pdu.raw_header = bytes(header[:BHS_LEN])
    return pdu, (lengths >> 24) * 4, lengths & 0xFFFFFF


def encode(pdu: PDU, header_digest: bool = False, data_digest: bool = False) -> list[bytes | memoryview]:
    """Encode a PDU as a list of buffers (header, data, padding, digests) for ``writelines``.

    The data segment is passed through untouched so large Data-In payloads are never copied.
    """
    hdr = pdu.header_bytes() + pdu.ahs
    out: list[bytes | memoryview] = [hdr]
    if header_digest:
        out.append(crc32c(hdr).to_bytes(4, "little"))
    data = pdu.data
    if data:
        pad = bytes(-len(data) % 4)
        out.append(memoryview(data) if isinstance(data, bytearray) else data)
        if pad:
            out.append(pad)
        if data_digest:
            crc = crc32c(data)
            if pad:
                crc = crc32c(pad, crc)
            out.append(crc.to_bytes(4, "little"))
    return out


def encode_bytes(pdu: PDU, header_digest: bool = False, data_digest: bool = False) -> bytes:
    """Encode a PDU to one bytes object (tests, small control PDUs)."""
    return b"".join(encode(pdu, header_digest, data_digest))


class DigestError(Exception):
    """A data digest mismatch: the PDU's header is trustworthy, so the target can Reject it."""

    def __init__(self, pdu: PDU) -> None:
        super().__init__("data digest mismatch")
        self.pdu = pdu


class PDUReader:
    """Reassembles PDUs from a TCP byte stream.

    ``feed()`` only buffers; ``next_pdu()`` returns one complete PDU or ``None``. Digest settings
    may change between PDUs (they start after login), so the reader never parses ahead.
    """

    def __init__(self, max_data_segment: int = MAX_DATA_SEGMENT) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.header_digest = False
        self.data_digest = False
        #: largest data segment accepted; anything larger is a framing error (drop the link)
        self.max_data_segment = max_data_segment

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_pdu(self) -> PDU | None:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < BHS_LEN:
            return None
        mv = memoryview(buf)
        digest_ok = True
        try:
            pdu, ahs_len, dlen = decode_bhs(mv[pos : pos + BHS_LEN])
            if dlen > self.max_data_segment:
                raise PDUError(
                    f"data segment of {dlen} bytes exceeds the {self.max_data_segment} we accept"
                )
            hd = 4 if self.header_digest else 0
            padded = (dlen + 3) & ~3
            dd = 4 if (self.data_digest and dlen) else 0
            total = BHS_LEN + ahs_len + hd + padded + dd
            if avail < total:
                return None
            p = pos + BHS_LEN
            if hd:
                got = int.from_bytes(mv[p + ahs_len : p + ahs_len + 4], "little")
                if got != crc32c(mv[pos : p + ahs_len]):
                    raise PDUError("header digest mismatch")
            if ahs_len:
                pdu.ahs = bytes(mv[p : p + ahs_len])
            p += ahs_len + hd
            if dlen:
                pdu.data = bytes(mv[p : p + dlen])
                if dd:
                    got = int.from_bytes(mv[p + padded : p + padded + 4], "little")
                    digest_ok = got == crc32c(mv[p : p + padded])
        finally:
            mv.release()
        self._advance(total)
        if not digest_ok:
            raise DigestError(pdu)
        return pdu

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > (1 << 20):
            del self._buf[: self._pos]
            self._pos = 0


# --- LUN field (SAM-5 single-level addressing) --------------------------------------------


def encode_lun(lun: int) -> bytes:
    if lun < 256:
        return bytes([0, lun]) + bytes(6)
    if lun < 16384:
        return bytes([0x40 | (lun >> 8), lun & 0xFF]) + bytes(6)
    raise ValueError(f"LUN {lun} needs more than flat addressing")


def decode_lun(raw: bytes) -> int:
    method = raw[0] >> 6
    if method == 1:  # flat space
        return ((raw[0] & 0x3F) << 8) | raw[1]
    if method == 0 and raw[0] == 0:  # peripheral device, bus 0
        return raw[1]
    return -1  # an address form we do not serve: treated as an absent LUN


# --- text segments (key=value pairs, NUL-separated) ---------------------------------------


def parse_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a text data segment into (key, value) pairs, in order; raises ValueError if malformed."""
    raw = bytes(data)
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    pairs = []
    for item in raw.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ValueError(f"malformed key=value item {item[:64]!r}")
        pairs.append((key.decode("utf-8"), value.decode("utf-8")))
    return pairs


def format_text(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def u32(data: bytes, offset: int = 0) -> int:
    return _U32.unpack_from(data, offset)[0]

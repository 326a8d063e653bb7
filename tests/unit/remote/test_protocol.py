"""The frame codec without sockets: byte layout vectors, CRC/magic/version/size checks, payload codecs."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c

from storaged.backstore.base import BackstoreError, BackstoreFull, BackstoreUnavailable, Extent
from storaged.remote.api import LinkDown, LinkTimeout, RemoteError
from storaged.remote.protocol import (
    FLAG_FUA,
    HEADER_SIZE,
    MAX_IO,
    MAX_PAYLOAD,
    Frame,
    FrameType,
    Opcode,
    ProtocolError,
    Status,
    backstore_error,
    decode_caw_result,
    decode_data_request,
    decode_extents,
    decode_json,
    encode_caw_result,
    encode_data_header,
    encode_error,
    encode_extents,
    encode_frame,
    encode_json,
    status_for_exception,
)
from storaged.remote.reader import FrameReader

from .helpers import frames_of, join

#: REQUEST READ, flags FUA, request id 0x0102030405060708, payload b"hello"
VECTOR = bytes.fromhex("5344524c010502010000000001020304050607080000000548c4850b68656c6c6f")


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_header_layout_vector() -> None:
    wire = join(encode_frame(FrameType.REQUEST, opcode=Opcode.READ, flags=FLAG_FUA,
                             request_id=0x0102030405060708, payload=b"hello", version=1))
    assert wire == VECTOR
    assert HEADER_SIZE == 28
    magic, ver, ftype, op, flags, status, rsv, rid, length, crc = struct.unpack(">4sBBBBHHQII", wire[:28])
    assert (magic, ver, ftype, op, flags, status, rsv, rid, length) == (
        b"SDRL", 1, FrameType.REQUEST, Opcode.READ, FLAG_FUA, 0, 0, 0x0102030405060708, 5)
    assert crc == crc32c(wire[28:], crc32c(wire[:24]))
    (frame,) = frames_of(wire)
    assert frame == Frame(FrameType.REQUEST, Opcode.READ, FLAG_FUA, 0, 0x0102030405060708, b"hello", 1)


def test_encode_returns_uncopied_parts() -> None:
    big = bytearray(1 << 20)
    mv = memoryview(big)
    bufs = encode_frame(FrameType.RESPONSE, payload=[b"ab", mv, b""])
    assert len(bufs) == 3 and bufs[2] is mv  # empty parts dropped, big part passed through


def test_round_trip_every_type_byte_by_byte() -> None:
    frames = [encode_frame(t, opcode=i % 10, status=i, request_id=i * 7919, payload=bytes([i]) * i)
              for i, t in enumerate(FrameType)]
    wire = b"".join(join(f) for f in frames)
    r = FrameReader()
    out = []
    for b in wire:
        r.feed(bytes([b]))
        while (f := r.next_frame()) is not None:
            out.append(f)
    assert [(f.type, f.request_id, f.payload) for f in out] == [
        (t, i * 7919, bytes([i]) * i) for i, t in enumerate(FrameType)]
    assert r.buffered == 0


@pytest.mark.parametrize("size", [0, 100, 64 * 1024, (1 << 20) + 3, MAX_IO])
def test_large_payload_received_in_place(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = join(encode_frame(FrameType.RESPONSE, request_id=9, payload=payload)) + join(
        encode_frame(FrameType.PONG, request_id=10))
    r = FrameReader()
    got: list[Frame] = []
    pos = 0
    while pos < len(wire):  # the BufferedProtocol path
        buf = r.get_buffer()
        n = min(len(buf), len(wire) - pos, 300_000)
        buf[:n] = wire[pos : pos + n]
        del buf
        pos += n
        r.buffer_updated(n)
        while (f := r.next_frame()) is not None:
            got.append(f)
    assert [f.request_id for f in got] == [9, 10]
    assert type(got[0].payload) is bytes and got[0].payload == payload


def test_tampered_crc_payload_and_header() -> None:
    for pos in (4, 5, 12, 24, 30):  # version, type, request id, CRC field, payload
        wire = bytearray(VECTOR)
        wire[pos] ^= 0x40
        r = FrameReader()
        r.feed(wire)
        with pytest.raises(ProtocolError):
            r.next_frame()


def test_bad_magic() -> None:
    r = FrameReader()
    r.feed(b"XXXX" + VECTOR[4:])
    with pytest.raises(ProtocolError, match="magic"):
        r.next_frame()


def test_wrong_version_when_pinned() -> None:
    wire = join(encode_frame(FrameType.PING, version=2))
    assert frames_of(wire)[0].version == 2  # unpinned (handshake) accepts any
    r = FrameReader(version=1)
    r.feed(wire)
    with pytest.raises(ProtocolError) as e:
        r.next_frame()
    assert e.value.status == Status.UNSUPPORTED_VERSION


def test_unknown_frame_type() -> None:
    wire = bytearray(join(encode_frame(FrameType.PING)))
    wire[5] = 0x77
    struct.pack_into(">I", wire, 24, crc32c(bytes(wire[:24])))
    with pytest.raises(ProtocolError, match="type"):
        frames_of(wire)


def test_oversize_payload_rejected_from_header_alone() -> None:
    head = struct.pack(">4sBBBBHHQI", b"SDRL", 1, FrameType.REQUEST, Opcode.WRITE, 0, 0, 0, 1, MAX_PAYLOAD + 1)
    r = FrameReader()
    r.feed(head + b"\0\0\0\0")
    with pytest.raises(ProtocolError, match="exceeds"):
        r.next_frame()
    with pytest.raises(ValueError):
        encode_frame(FrameType.REQUEST, payload=bytes(MAX_PAYLOAD + 1))


def test_never_parses_ahead_and_errors_are_final() -> None:
    r = FrameReader()
    r.feed(VECTOR + b"garbage that is long enough to look like a header")
    assert r.next_frame() is not None  # the good frame comes out first
    with pytest.raises(ProtocolError):
        r.next_frame()
    r.feed(VECTOR)
    with pytest.raises(ProtocolError):
        r.next_frame()


def test_pin_applies_to_the_very_next_frame() -> None:
    r = FrameReader()
    r.feed(join(encode_frame(FrameType.HELLO, version=3)) + join(encode_frame(FrameType.AUTH, version=3)))
    assert r.next_frame() is not None
    r.version = 1
    with pytest.raises(ProtocolError):
        r.next_frame()


def test_data_request_round_trip() -> None:
    head = encode_data_header("iqn.x:t", 7, "iqn.host", 4096, 3)
    req = decode_data_request(Opcode.WRITE, head + b"abc")
    assert (req.target, req.lun, req.origin, req.offset, req.length, bytes(req.data)) == (
        "iqn.x:t", 7, "iqn.host", 4096, 3, b"abc")
    caw = decode_data_request(Opcode.COMPARE_AND_WRITE, encode_data_header("", 0, "", 0, 2) + b"xxyy")
    assert (bytes(caw.expected), bytes(caw.new_data)) == (b"xx", b"yy")
    assert decode_data_request(Opcode.READ, encode_data_header("t", 0, "", 0, MAX_IO)).length == MAX_IO


@pytest.mark.parametrize("opcode,payload", [
    (Opcode.WRITE, encode_data_header("t", 0, "", 0, 4) + b"abc"),  # short data
    (Opcode.READ, encode_data_header("t", 0, "", 0, 4) + b"x"),  # READ carries no data
    (Opcode.READ, encode_data_header("t", 0, "", 0, MAX_IO + 1)),
    (Opcode.COMPARE_AND_WRITE, encode_data_header("t", 0, "", 0, 2) + b"xxy"),
    (Opcode.FLUSH, b"\0" * 10),
    (Opcode.UNMAP, struct.pack(">QQIHH", 0, 0, 0, 50, 0) + b"t"),  # target length past the end
    (Opcode.UNMAP, struct.pack(">QQIHH", 0, 0, 0, 1, 0) + b"\xff"),  # not UTF-8
])
def test_bad_data_requests(opcode: Opcode, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_data_request(opcode, payload)


def test_small_bodies() -> None:
    ext = [Extent(0, 4096, True), Extent(4096, 1 << 40, False)]
    assert decode_extents(encode_extents(ext)) == ext
    assert len(encode_extents(ext)) == 4 + 2 * 17
    assert decode_extents(encode_extents([])) == []
    with pytest.raises(ProtocolError):
        decode_extents(encode_extents(ext)[:-1])
    assert decode_caw_result(encode_caw_result(-1)) == -1
    assert decode_caw_result(encode_caw_result(513)) == 513
    assert decode_json(encode_json({"a": [1]})) == {"a": [1]}
    for bad in (b"[1]", b"{", b"\xff"):
        with pytest.raises(ProtocolError):
            decode_json(bad)
    (err,) = frames_of(join(encode_error(Status.AUTH_FAILED, "nope")))
    assert (err.type, err.status, err.payload) == (FrameType.ERROR, Status.AUTH_FAILED, b"nope")


def test_exception_status_mapping_both_ways() -> None:
    assert status_for_exception(BackstoreFull("x")) == Status.NO_SPACE
    assert status_for_exception(BackstoreUnavailable("x")) == Status.UNAVAILABLE
    assert status_for_exception(BackstoreError("x")) == Status.IO_ERROR
    assert status_for_exception(RemoteError(Status.NOT_ALLOWED, "x")) == Status.NOT_ALLOWED
    assert status_for_exception(ProtocolError("x")) == Status.BAD_REQUEST
    assert status_for_exception(RuntimeError("x")) == Status.INTERNAL
    assert type(backstore_error(RemoteError(Status.NO_SPACE, "x"))) is BackstoreFull
    assert type(backstore_error(RemoteError(Status.UNAVAILABLE, "x"))) is BackstoreUnavailable
    assert type(backstore_error(LinkDown("x"))) is BackstoreUnavailable
    assert type(backstore_error(LinkTimeout("x"))) is BackstoreUnavailable
    assert type(backstore_error(RemoteError(Status.IO_ERROR, "x"))) is BackstoreError

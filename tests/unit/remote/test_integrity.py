"""Frame tags after the handshake (sans-IO): key derivation, and a reader that refuses altered,
injected, replayed, reordered, dropped and untagged frames; handshake-mode limits."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c

from storaged.remote.integrity import TAG_SIZE, FrameMac, derive_keys, hkdf_expand, hkdf_extract
from storaged.remote.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    PREAUTH_MAX_PAYLOAD,
    FrameType,
    Opcode,
    ProtocolError,
    Status,
    encode_data_header,
    encode_frame,
)
from storaged.remote.reader import FrameReader

from .helpers import join

KEY = bytes(range(32))


def test_hkdf_rfc5869_vectors() -> None:
    # RFC 5869 A.1 and A.3
    prk = hkdf_extract(bytes.fromhex("000102030405060708090a0b0c"), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    assert hkdf_expand(prk, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    prk = hkdf_extract(b"", b"\x0b" * 22)
    assert hkdf_expand(prk, b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")


def test_keys_per_direction_and_per_connection() -> None:
    base = ("secret", 2, b"c" * 32, b"s" * 32, "A", "B")
    k = derive_keys(*base)
    assert k.client_to_server != k.server_to_client and len(k.client_to_server) == 32
    for i, alt in enumerate(["other", 3, b"x" * 32, b"y" * 32, "A2", "B2"]):
        args = list(base)
        args[i] = alt
        assert derive_keys(*args) != k  # type: ignore[arg-type]


def sealed_stream(frames: list[list[bytes]], key: bytes = KEY) -> list[bytes]:
    tx = FrameMac(key)
    return [join(tx.seal(f)) for f in frames]


def write_frame(rid: int, data: bytes) -> list[bytes]:
    head = encode_data_header("t", 0, "", 0, len(data))
    return [bytes(b) for b in encode_frame(FrameType.REQUEST, opcode=Opcode.WRITE, request_id=rid,
                                          payload=head + data, version=2)]


def reader(key: bytes = KEY) -> FrameReader:
    r = FrameReader.handshake()
    r.authenticated(2, FrameMac(key))
    return r


def decode(r: FrameReader, wire: bytes) -> list:
    r.feed(wire)
    out = []
    while (f := r.next_frame()) is not None:
        out.append(f)
    return out


@pytest.mark.parametrize("size", [0, 100, 70_000, 1 << 20])  # 70 KB and 1 MiB go the in-place path
def test_sealed_frames_round_trip_byte_by_byte_and_in_place(size: int) -> None:
    frames = [write_frame(i, bytes([i]) * size) for i in range(3)]
    wire = b"".join(sealed_stream(frames))
    assert len(wire) == sum(len(join(f)) for f in frames) + 3 * TAG_SIZE
    r, got = reader(), []
    pos = 0
    while pos < len(wire):  # through the BufferedProtocol interface, 7 bytes at most per read
        buf = r.get_buffer()
        n = min(len(buf), 7 if size < 70_000 else len(buf), len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        del buf
        r.buffer_updated(n)
        pos += n
        while (f := r.next_frame()) is not None:
            got.append(f)
    assert [(f.request_id, f.payload) for f in got] == [(i, join(frames[i][1:])) for i in range(3)]


def test_altered_frame_with_fixed_crc_rejected() -> None:
    good, victim = sealed_stream([write_frame(1, b"a" * 64), write_frame(2, b"b" * 64)])
    forged = bytearray(victim)
    forged[-1] ^= 0xFF  # change the data, then fix the CRC as an attacker would
    (length,) = struct.unpack_from(">I", forged, 20)
    body = forged[HEADER_SIZE + TAG_SIZE :]
    assert len(body) == length
    struct.pack_into(">I", forged, 24, crc32c(bytes(body), crc32c(bytes(forged[:24]))))
    r = reader()
    assert [f.request_id for f in decode(r, good)] == [1]
    with pytest.raises(ProtocolError) as e:
        decode(r, bytes(forged))
    assert e.value.status == Status.INTEGRITY_FAILED and "MAC mismatch" in str(e.value)


def test_injected_frames_rejected() -> None:
    """Valid CRCs, but made without the key: untagged (v1) frames, a zero tag, or a frame tagged
    with the other direction's key (reflected back to its sender)."""
    untagged = join(write_frame(9, b"evil"))
    zero_tag = untagged[:HEADER_SIZE] + bytes(TAG_SIZE) + untagged[HEADER_SIZE:]
    k = derive_keys("s", 2, b"c" * 32, b"s" * 32, "A", "B")
    (reflected,) = sealed_stream([write_frame(1, b"x")], k.client_to_server)
    with pytest.raises(ProtocolError):  # read as tagged, the bytes are off by 16: CRC or tag fails
        decode(reader(), untagged * 2)
    for wire, key in [(zero_tag, KEY), (reflected, k.server_to_client)]:
        with pytest.raises(ProtocolError) as e:
            decode(reader(key), wire)
        assert e.value.status == Status.INTEGRITY_FAILED


def test_replayed_reordered_and_dropped_frames_rejected() -> None:
    s = sealed_stream([write_frame(i, bytes([i]) * 10) for i in range(3)])
    for wire, ok in [(s[0] + s[1] + s[1], 2),  # replay
                     (s[0] + s[0], 1),  # replay of the previous frame
                     (s[1] + s[0], 0),  # reordered
                     (s[0] + s[2], 1)]:  # s[1] dropped
        r, got = reader(), []
        with pytest.raises(ProtocolError):
            r.feed(wire)
            while (f := r.next_frame()) is not None:
                got.append(f)
        assert len(got) == ok


def test_handshake_reader_refuses_big_frames_from_the_header_alone() -> None:
    r = FrameReader.handshake()
    head = join(encode_frame(FrameType.HELLO, payload=b"x" * 10))[:HEADER_SIZE]
    big = bytearray(head)
    struct.pack_into(">I", big, 20, MAX_PAYLOAD)
    r.feed(bytes(big))
    with pytest.raises(ProtocolError, match="exceeds"):
        r.next_frame()
    assert r.buffered == 0 and r.get_buffer().nbytes <= FrameReader.HANDSHAKE_SCRATCH
    # the largest legal handshake payload is fine
    ok = FrameReader.handshake()
    (f,) = decode(ok, join(encode_frame(FrameType.HELLO, payload=b"y" * PREAUTH_MAX_PAYLOAD)))
    assert len(f.payload) == PREAUTH_MAX_PAYLOAD


@pytest.mark.parametrize("ftype", [FrameType.REQUEST, FrameType.RESPONSE, FrameType.PING, FrameType.PONG])
def test_handshake_reader_refuses_other_frame_types(ftype: FrameType) -> None:
    r = FrameReader.handshake()
    with pytest.raises(ProtocolError) as e:
        decode(r, join(encode_frame(ftype)))
    assert e.value.status == Status.WRONG_STATE


def test_authenticated_reader_takes_full_size_frames() -> None:
    r = reader()
    data = bytes(range(256)) * 40000
    (f,) = decode(r, sealed_stream([write_frame(5, data)])[0])
    assert f.payload.endswith(data)

"""Hypothesis drives the decoder with the tag layer on: tagged frames come out unchanged however
they are chopped; a stream with any byte changed yields the frames before the change and then an
error (or waits for bytes that never come), never a frame that was not sent; arbitrary bytes give
no frame at all."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storaged.remote.integrity import FrameMac
from storaged.remote.protocol import Frame, FrameType, ProtocolError, encode_frame
from storaged.remote.reader import FrameReader

from .helpers import join

KEY = b"k" * 32

frames = st.lists(st.builds(
    lambda t, op, fl, stt, rid, p: encode_frame(t, opcode=op, flags=fl, status=stt, request_id=rid, payload=p),
    st.sampled_from(list(FrameType)), st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535),
    st.integers(0, 2**64 - 1), st.binary(max_size=200) | st.just(bytes(70_000))), min_size=1, max_size=6)


def seal_all(items: list[list]) -> tuple[bytes, list[int]]:
    """The wire bytes and where each frame ends."""
    tx = FrameMac(KEY)
    wire, ends = b"", []
    for f in items:
        wire += join(tx.seal(f))
        ends.append(len(wire))
    return wire, ends


def decode_chopped(wire: bytes, cuts: list[int]) -> tuple[list[Frame], ProtocolError | None]:
    r = FrameReader.handshake()
    r.authenticated(2, FrameMac(KEY))
    got: list[Frame] = []
    pos, i = 0, 0
    try:
        while pos < len(wire):
            buf = r.get_buffer()
            n = min(len(buf), len(wire) - pos, cuts[i % len(cuts)])
            buf[:n] = wire[pos : pos + n]
            del buf
            r.buffer_updated(n)
            pos += n
            i += 1
            while (f := r.next_frame()) is not None:
                got.append(f)
    except ProtocolError as e:
        return got, e
    return got, None


def as_tuples(fs: list[Frame]) -> list[tuple]:
    return [(f.type, f.opcode, f.flags, f.status, f.request_id, bytes(f.payload)) for f in fs]


def expected(items: list[list]) -> list[tuple]:
    out = []
    for f in items:
        (g,) = decode_plain(join(f))
        out.append(g)
    return out


def decode_plain(wire: bytes) -> list[tuple]:
    r = FrameReader(version=2)
    r.feed(wire)
    fs = []
    while (f := r.next_frame()) is not None:
        fs.append(f)
    return as_tuples(fs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.lists(st.integers(1, 100_000), min_size=1, max_size=5))
def test_tagged_frames_round_trip(items: list[list], cuts: list[int]) -> None:
    wire, _ends = seal_all(items)
    got, err = decode_chopped(wire, cuts)
    assert err is None and as_tuples(got) == expected(items)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.data(), st.integers(1, 255), st.lists(st.integers(1, 100_000), min_size=1, max_size=5))
def test_any_changed_byte_is_caught(items: list[list], data: st.DataObject, xor: int, cuts: list[int]) -> None:
    wire, ends = seal_all(items)
    pos = data.draw(st.integers(0, len(wire) - 1))
    bad = bytearray(wire)
    bad[pos] ^= xor
    got, err = decode_chopped(bytes(bad), cuts)
    damaged = next(i for i, end in enumerate(ends) if pos < end)
    # frames before the damaged one are intact; nothing from the damaged one on is accepted
    assert as_tuples(got) == expected(items)[:damaged]
    if err is None:  # a length field grew: the reader waits for bytes that never come
        assert 20 <= pos - (ends[damaged - 1] if damaged else 0) < 24


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), min_size=1, max_size=3))
def test_arbitrary_bytes_give_no_frame(blob: bytes, cuts: list[int]) -> None:
    got, _err = decode_chopped(blob, cuts)
    assert got == []

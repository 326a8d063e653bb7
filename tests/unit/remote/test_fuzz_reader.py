"""Hypothesis: a FrameReader turns any byte stream into frames or a ProtocolError, nothing else,
and valid frame streams come out unchanged however they are chopped."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storaged.remote.protocol import Frame, FrameType, ProtocolError, encode_frame
from storaged.remote.reader import FrameReader

from .helpers import join

frames = st.builds(
    lambda t, op, fl, stt, rid, p: (t, op, fl, stt, rid, p),
    st.sampled_from(list(FrameType)), st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535),
    st.integers(0, 2**64 - 1), st.binary(max_size=300) | st.just(bytes(70_000)),
)


def _drain(r: FrameReader) -> list[Frame]:
    out = []
    while (f := r.next_frame()) is not None:
        out.append(f)
    return out


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64), st.sampled_from([None, 1]))
def test_any_bytes_give_frames_or_protocol_error(blob: bytes, chunk: int, pin: int | None) -> None:
    r = FrameReader(version=pin)
    try:
        for i in range(0, len(blob), chunk):
            r.feed(blob[i : i + chunk])
            for f in _drain(r):
                assert isinstance(f, Frame)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=6), st.binary(max_size=40), st.lists(st.integers(1, 100_000), min_size=1))
def test_valid_frames_then_garbage(items: list[tuple], garbage: bytes, cuts: list[int]) -> None:
    wire = b"".join(join(encode_frame(t, opcode=op, flags=fl, status=s, request_id=rid, payload=p))
                    for t, op, fl, s, rid, p in items) + garbage
    r = FrameReader()
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
            while (f := r.next_frame()) is not None:  # frames before the garbage are kept
                got.append(f)
    except ProtocolError:
        assert garbage  # only the trailing garbage may be rejected
    assert [(f.type, f.opcode, f.flags, f.status, f.request_id, f.payload) for f in got] == [
        (t, op, fl, s, rid, p) for t, op, fl, s, rid, p in items]

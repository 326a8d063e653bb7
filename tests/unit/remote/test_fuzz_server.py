"""Hypothesis drives garbage into an authenticated server connection (fake transport, real event
loop): it answers, or sends ERROR and closes, but never raises, never runs more requests than its
bound, and never emits a malformed frame."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storaged.remote.auth import ClientHandshake
from storaged.remote.integrity import FrameMac
from storaged.remote.link import LinkServer, _ServerConnection
from storaged.remote.protocol import (
    Frame,
    FrameType,
    Opcode,
    Status,
    encode_data_header,
    encode_frame,
    encode_json,
)
from storaged.remote.reader import FrameReader

from .helpers import TARGET, FakeHandler, FakeTransport, feed_protocol, join

BOUND = 3


async def authenticated(handler: FakeHandler) -> tuple[_ServerConnection, FakeTransport, FrameReader, list[Any],
                                                       FrameMac]:
    """A server connection through the handshake; the reader decodes (and checks) what it sends,
    the FrameMac seals what we send it."""
    errors: list[Any] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server = LinkServer("B", "uuid-b", {"A": "s3cret"}, handler, max_inflight_per_connection=BOUND)
    conn = _ServerConnection(server)
    t = FakeTransport(conn)
    conn.connection_made(t)  # type: ignore[arg-type]
    client = ClientHandshake("A", "uuid-a", "B", "s3cret")
    reader = FrameReader.handshake()
    feed_protocol(conn, join(client.hello()))
    await asyncio.sleep(0)
    while not client.done:
        reader.feed(bytes(t.out))
        t.out.clear()
        f = reader.next_frame()
        assert f is not None
        out = client.receive(f)
        if out:
            feed_protocol(conn, join(out))
        await asyncio.sleep(0)
    assert conn.hs.done and conn.peer == "A"
    tx, rx = client.session_keys()
    reader.authenticated(conn.version, FrameMac(rx))
    return conn, t, reader, errors, FrameMac(tx)


def data_req(op: int, target: str, lun: int, offset: int, length: int, extra: bytes) -> bytes:
    return encode_data_header(target, lun, "h", offset, length) + extra


payloads = st.one_of(
    st.binary(max_size=64),
    st.builds(data_req, st.sampled_from(list(Opcode)), st.sampled_from([TARGET, "", "nope"]), st.integers(0, 3),
              st.integers(0, 40 << 20), st.integers(0, 1 << 21), st.binary(max_size=64)),
    st.builds(lambda d: encode_json(d), st.dictionaries(st.sampled_from(["target", "lun", "method", "params",
                                                                         "origin"]),
                                                        st.one_of(st.integers(), st.text(max_size=5), st.none(),
                                                                  st.just({}), st.just("echo")))),
)
good_frames = st.builds(  # sealed when sent: a list of buffers, not bytes
    lambda t, op, fl, rid, p: encode_frame(t, opcode=op, flags=fl, request_id=rid, payload=p),
    st.sampled_from([FrameType.REQUEST] * 4 + list(FrameType)), st.integers(0, 12), st.integers(0, 3),
    st.integers(0, 2**64 - 1), payloads,
)
chunks = st.lists(st.one_of(good_frames, st.binary(min_size=1, max_size=80)), min_size=1, max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks)
def test_garbage_after_auth(seq: list[bytes | list[bytes]]) -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        for v in handler.volumes.values():
            v.delay = 0.001
        conn, t, reader, errors, tx = await authenticated(handler)
        for item in seq:
            if t.closed:
                break
            if t.reading:
                feed_protocol(conn, item if isinstance(item, bytes) else join(tx.seal(item)))
            for _ in range(3):
                await asyncio.sleep(0.002)
        for _ in range(20):
            if not conn.tasks:
                break
            await asyncio.sleep(0.005)
        assert not errors, errors
        assert conn.max_inflight_seen <= BOUND
        assert max(v.max_running for v in handler.volumes.values()) <= BOUND
        reader.feed(bytes(t.out))
        out: list[Frame] = []
        while (f := reader.next_frame()) is not None:  # everything the server said parses
            out.append(f)
        assert all(f.type in (FrameType.RESPONSE, FrameType.PONG, FrameType.ERROR, FrameType.PING) for f in out)
        if any(f.type == FrameType.ERROR for f in out):
            assert out[-1].type == FrameType.ERROR or t.closed
            assert t.closed
        for f in out:
            if f.type == FrameType.RESPONSE:
                Status(f.status)  # a known status

    asyncio.run(scenario())


def test_bad_frame_gets_error_and_close() -> None:
    async def scenario() -> None:
        conn, t, reader, errors, _tx = await authenticated(FakeHandler())
        feed_protocol(conn, b"SDRL\x02" + bytes(39))  # frame type 0
        await asyncio.sleep(0.01)
        reader.feed(bytes(t.out))
        f = reader.next_frame()
        assert f is not None and f.type == FrameType.ERROR and f.status == Status.BAD_REQUEST
        assert t.closed and not errors

    asyncio.run(scenario())


def test_inflight_bound_pauses_reading() -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        handler.volumes[(TARGET, 0)].delay = 0.05
        conn, t, reader, errors, tx = await authenticated(handler)
        reqs = b"".join(join(tx.seal(encode_frame(FrameType.REQUEST, opcode=Opcode.READ, request_id=i,
                                          payload=data_req(Opcode.READ, TARGET, 0, 0, 512, b""))))
                        for i in range(10))
        feed_protocol(conn, reqs)  # all ten arrive in one read
        await asyncio.sleep(0)
        assert len(conn.tasks) == BOUND and not t.reading and conn.reader.buffered > 0
        for _ in range(100):
            await asyncio.sleep(0.01)
            if conn.requests == 10 and not conn.tasks:
                break
        assert conn.requests == 10 and conn.max_inflight_seen == BOUND and t.reading
        reader.feed(bytes(t.out))
        ids = []
        while (f := reader.next_frame()) is not None:
            assert f.status == Status.OK and len(f.payload) == 512
            ids.append(f.request_id)
        assert sorted(ids) == list(range(10)) and not errors

    asyncio.run(scenario())

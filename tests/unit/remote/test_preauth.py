"""What a peer that has not authenticated may cost a LinkServer (fake transports, real event
loop): handshake frames only and small, a bounded number of such connections, refusals logged
at a bounded rate; a slot is freed by authenticating or by leaving."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from storaged.remote.auth import ClientHandshake
from storaged.remote.link import LinkServer, _ServerConnection
from storaged.remote.protocol import HEADER_SIZE, MAX_PAYLOAD, FrameType, Opcode, Status, encode_frame
from storaged.remote.reader import FrameReader

from .helpers import FakeHandler, FakeTransport, feed_protocol, frames_of, join

SECRET = "s3cret-s3cret-s3cret"


def server(**kw: object) -> LinkServer:
    return LinkServer("B", "uuid-b", {"A": SECRET}, FakeHandler(), **kw)  # type: ignore[arg-type]


def connect(srv: LinkServer) -> tuple[_ServerConnection, FakeTransport]:
    conn = _ServerConnection(srv)
    t = FakeTransport(conn)
    conn.connection_made(t)  # type: ignore[arg-type]
    return conn, t


async def authenticate(conn: _ServerConnection, t: FakeTransport) -> None:
    client = ClientHandshake("A", "uuid-a", "B", SECRET)
    reader = FrameReader.handshake()
    feed_protocol(conn, join(client.hello()))
    while not client.done:
        await asyncio.sleep(0)
        reader.feed(bytes(t.out))
        t.out.clear()
        while not client.done and (f := reader.next_frame()) is not None:
            feed_protocol(conn, join(client.receive(f)))
    await asyncio.sleep(0)
    assert conn.hs.done


def test_handshake_frame_over_the_cap_closes_from_its_header() -> None:
    async def scenario() -> None:
        srv = server()
        conn, t = connect(srv)
        head = bytearray(join(encode_frame(FrameType.HELLO, payload=b"{}"))[:HEADER_SIZE])
        struct.pack_into(">I", head, 20, MAX_PAYLOAD)  # announce a maximum-size frame
        feed_protocol(conn, bytes(head))
        await asyncio.sleep(0.01)
        (f,) = frames_of(t.out)
        assert f.type == FrameType.ERROR and f.status == Status.BAD_REQUEST
        assert t.closed and conn.reader.buffered == 0
        assert srv.unauthenticated == 0 and not srv.connections  # its slot is free again

    asyncio.run(scenario())


def test_request_before_the_handshake_closes() -> None:
    async def scenario() -> None:
        conn, t = connect(server())
        feed_protocol(conn, join(encode_frame(FrameType.REQUEST, opcode=Opcode.READ, payload=b"x" * 100)))
        await asyncio.sleep(0.01)
        (f,) = frames_of(t.out)
        assert f.type == FrameType.ERROR and f.status == Status.WRONG_STATE and t.closed

    asyncio.run(scenario())


def test_unauthenticated_connections_bounded_and_refusals_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        srv = server(max_unauthenticated=3)
        admitted = [connect(srv) for _ in range(3)]
        with caplog.at_level(logging.WARNING, logger="storaged.remote.link"):
            refused = [connect(srv) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert all(t.aborted and not t.out for _c, t in refused)  # closed at once, not a byte read
        assert not any(t.closed for _c, t in admitted)
        assert srv.unauthenticated == 3 and srv.refused == 20 and len(srv.connections) == 3
        lines = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1  # one line per REFUSAL_LOG_INTERVAL, not one per connection
        # authenticating frees a slot, and so does leaving
        await authenticate(*admitted[0])
        assert srv.unauthenticated == 2
        _c4, t4 = connect(srv)
        assert not t4.closed and srv.unauthenticated == 3
        admitted[1][1].close()
        await asyncio.sleep(0.01)
        assert srv.unauthenticated == 2
        _c5, t5 = connect(srv)
        assert not t5.closed and srv.unauthenticated == 3
        _c6, t6 = connect(srv)
        assert t6.aborted and srv.refused == 21

    asyncio.run(scenario())


def test_refusal_log_says_how_many_were_refused_since_the_last_line(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        srv = server(max_unauthenticated=0)
        srv.REFUSAL_LOG_INTERVAL = 0.05
        with caplog.at_level(logging.WARNING, logger="storaged.remote.link"):
            for _ in range(5):
                connect(srv)
            await asyncio.sleep(0.06)
            connect(srv)
        msgs = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(msgs) == 2 and "refused 1 " in msgs[0] and "refused 5 " in msgs[1]

    asyncio.run(scenario())


def test_bad_preauth_frames_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        srv = server()
        with caplog.at_level(logging.WARNING, logger="storaged.remote.link"):
            for _ in range(10):
                conn, t = connect(srv)
                feed_protocol(conn, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
                assert t.closed
        msgs = [r.getMessage() for r in caplog.records if "before authentication" in r.getMessage()]
        assert len(msgs) == 1 and "bad magic" in msgs[0]

    asyncio.run(scenario())

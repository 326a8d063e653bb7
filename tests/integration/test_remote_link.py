"""A real LinkServer and PeerLink on 127.0.0.1 in one process, serving MemoryBackstore volumes.

No timed assertions: waits are bounded only so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from storaged.backstore.base import BackstoreFull, Extent
from storaged.origin import ORIGIN
from storaged.remote.api import LinkDown, LinkTimeout, RemoteError, VolumeInfo
from storaged.remote.auth import ClientHandshake, ServerHandshake
from storaged.remote.integrity import FrameMac
from storaged.remote.link import LinkServer, PeerLink
from storaged.remote.protocol import FrameType, Opcode, Status, encode_data_header, encode_frame
from storaged.remote.reader import FrameReader
from tests.unit.remote.helpers import TARGET, FakeHandler, join

SECRET = "s3cret-shared-by-a-and-b"


@dataclass
class Pair:
    server: LinkServer
    link: PeerLink
    handler: FakeHandler
    port: int


async def make_pair(*, server_kw: dict[str, Any] | None = None, **link_kw: Any) -> Pair:
    handler = FakeHandler()
    server = LinkServer("B", "uuid-b", {"A": SECRET}, handler, **(server_kw or {}))
    _host, port = await server.start("127.0.0.1", 0)
    link = PeerLink("A", "uuid-a", "B", "127.0.0.1", port, link_kw.pop("secret", SECRET), **link_kw)
    return Pair(server, link, handler, port)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await make_pair(backoff_initial=0.05, backoff_max=0.2)
    p.link.start()
    await p.link.wait_connected(5)
    yield p
    await p.link.close()
    await p.server.close()


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_every_op_round_trips(pair: Pair) -> None:
    link, vol = pair.link, pair.handler.volumes[(TARGET, 0)]
    info = await link.open_volume(TARGET, 0)
    assert info == VolumeInfo(TARGET, 0, 32 << 20, 512, True, False, vol.info.naa)
    assert (await link.open_volume("", 1)).thin is False  # "" = the first target

    data = os.urandom(8192)
    await link.write(TARGET, 0, 4096, data)
    assert await link.read(TARGET, 0, 4096, 8192) == data
    assert await link.read(TARGET, 0, 0, 0) == b""
    flushes = vol.store.flushes
    await link.write(TARGET, 0, 0, b"x" * 512, fua=True)
    await link.flush(TARGET, 0)
    assert vol.store.flushes == flushes + 2

    assert await link.extents(TARGET, 0, 0, 64 << 10) == [Extent(0, 12288, True), Extent(12288, 53248, False)]
    await link.unmap(TARGET, 0, 4096, 4096)
    assert await link.read(TARGET, 0, 4096, 4096) == bytes(4096)
    await link.write_zeroes(TARGET, 0, 8192, 512)
    assert await link.read(TARGET, 0, 8192, 1024) == bytes(512) + data[4608:5120]

    assert await link.compare_and_write(TARGET, 0, 0, b"x" * 512, b"y" * 512) == -1
    assert await link.compare_and_write(TARGET, 0, 0, b"y" * 100 + b"z" * 412, b"q" * 512) == 100
    assert await link.read(TARGET, 0, 0, 512) == b"y" * 512

    assert await link.call("echo", {"k": [1, 2]}) == {"peer": "A", "origin": "A", "params": {"k": [1, 2]}}
    st = link.status()
    assert st["state"] == "up" and st["requests"] >= 15 and st["inflight"] == 0
    assert st["bytes_out"] > 8192 and st["bytes_in"] > 8192 and st["peer"] == "B"


async def test_error_statuses(pair: Pair) -> None:
    link = pair.link

    async def status_of(coro: Any) -> int:
        with pytest.raises(RemoteError) as e:
            await coro
        return e.value.status

    assert await status_of(link.open_volume(TARGET, 9)) == Status.NOT_FOUND
    assert await status_of(link.read("nope", 0, 0, 512)) == Status.NOT_FOUND
    assert await status_of(link.read(TARGET, 1, (1 << 20) - 512, 1024)) == Status.BAD_REQUEST
    assert await status_of(link.call("raise", {"kind": "full"})) == Status.NO_SPACE
    assert await status_of(link.call("raise", {"kind": "unavailable"})) == Status.UNAVAILABLE
    assert await status_of(link.call("raise", {"kind": "io"})) == Status.IO_ERROR
    assert await status_of(link.call("raise", {"kind": "remote"})) == Status.NOT_ALLOWED
    assert await status_of(link.call("raise", {"kind": "other"})) == Status.INTERNAL
    assert await status_of(link.call("bad_result", {})) == Status.INTERNAL
    assert await status_of(link.call("missing", {})) == Status.NOT_FOUND
    pair.handler.volumes[(TARGET, 0)].fail = BackstoreFull("ENOSPC")
    assert await status_of(link.write(TARGET, 0, 0, b"a" * 512)) == Status.NO_SPACE
    assert link.connected  # errors are per request


async def test_origin_seen_by_handler(pair: Pair) -> None:
    vol = pair.handler.volumes[(TARGET, 0)]
    await pair.link.read(TARGET, 0, 0, 512, origin="iqn.1994-05.com.redhat:host1")
    await pair.link.read(TARGET, 0, 0, 512, origin="")

    async def as_host2() -> None:
        ORIGIN.set("iqn.host2")
        await pair.link.write(TARGET, 0, 0, b"a" * 512)  # default: the calling task's origin
        await pair.link.call("echo", {})

    await asyncio.create_task(as_host2())
    assert vol.origins == ["A/iqn.1994-05.com.redhat:host1", "A", "A/iqn.host2"]
    assert pair.handler.calls[-1][3] == "A/iqn.host2"


async def test_200_concurrent_requests(pair: Pair) -> None:
    link = pair.link
    blocks = [os.urandom(4096) for _ in range(200)]
    await asyncio.gather(*(link.write(TARGET, 0, i * 4096, b) for i, b in enumerate(blocks)))
    got = await asyncio.gather(*(link.read(TARGET, 0, i * 4096, 4096) for i in range(200)))
    assert got == blocks
    calls = await asyncio.gather(*(link.call("echo", {"i": i}) for i in range(200)))
    assert [c["params"]["i"] for c in calls] == list(range(200))


async def test_large_reads_and_writes(pair: Pair) -> None:
    link = pair.link
    data = os.urandom(8 << 20)
    await link.write(TARGET, 0, 0, data)
    got = await link.read(TARGET, 0, 0, 8 << 20)
    assert type(got) is bytes and got == data
    big = os.urandom(20 << 20)  # above MAX_IO: split into several frames
    await link.write(TARGET, 0, 4 << 20, memoryview(big))
    assert await link.read(TARGET, 0, 4 << 20, 20 << 20) == big


async def test_request_timeout_and_semaphore_wait() -> None:
    p = await make_pair(io_timeout=5.0, max_inflight=1)
    p.link.start()
    try:
        await p.link.wait_connected(5)
        with pytest.raises(LinkTimeout):
            await p.link.call("sleep", {"seconds": 1.0}, timeout=0.1)
        slow = asyncio.create_task(p.link.call("sleep", {"seconds": 0.5}))
        await asyncio.sleep(0.05)
        with pytest.raises(LinkTimeout):  # waiting for the only slot counts toward the timeout
            await p.link.call("echo", {}, timeout=0.1)
        assert (await slow) == {"slept": 0.5}
        p.handler.volumes[(TARGET, 0)].delay = 1.0
        p.link.io_timeout = 0.1
        with pytest.raises(LinkTimeout):
            await p.link.read(TARGET, 0, 0, 512)
        p.link.io_timeout = 5.0
        assert (await p.link.call("echo", {}))["peer"] == "A"  # the link survives timeouts
        assert p.link.connected
    finally:
        await p.link.close()
        await p.server.close()


async def test_server_restart_linkdown_then_reconnect() -> None:
    p = await make_pair(backoff_initial=0.05, backoff_max=0.2)
    events: list[bool] = []
    p.link.add_listener(events.append)
    p.link.start()
    try:
        await p.link.wait_connected(5)
        inflight = asyncio.create_task(p.link.call("sleep", {"seconds": 10}))
        await wait_for(lambda: p.handler.running == 1)
        await p.server.close(grace=0.1)
        with pytest.raises(LinkDown):
            await inflight
        await wait_for(lambda: not p.link.connected)
        async with asyncio.timeout(1):  # fails at once, not after io_timeout
            with pytest.raises(LinkDown):
                await p.link.read(TARGET, 0, 0, 512)
        assert p.link.status()["state"] in ("down", "connecting")
        assert p.link.status()["last_error"]

        handler2 = FakeHandler()
        server2 = LinkServer("B", "uuid-b", {"A": SECRET}, handler2)
        await server2.start("127.0.0.1", p.port)
        try:
            await p.link.wait_connected(5)
            await p.link.write(TARGET, 0, 0, b"b" * 512)
            assert await p.link.read(TARGET, 0, 0, 512) == b"b" * 512
            assert p.link.status()["reconnects"] == 1
            assert events == [True, False, True]
        finally:
            await p.link.close()
            await server2.close()
    finally:
        await p.link.close()
        assert events[-1] is False


async def test_async_listener_refreshes_on_up(pair: Pair) -> None:
    infos: list[VolumeInfo] = []

    async def refresh(up: bool) -> None:
        if up:
            infos.append(await pair.link.open_volume(TARGET, 1))

    pair.link.add_listener(refresh)
    pair.link._conn.close("test drop")  # type: ignore[union-attr]
    await wait_for(lambda: len(infos) == 1)
    assert infos[0].size == 1 << 20


async def test_wrong_secret_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="storaged.remote.link")
    p = await make_pair(secret="not-the-secret", backoff_initial=0.05, backoff_max=0.1)
    p.link.start()
    try:
        await wait_for(lambda: "AUTH_FAILED" in (p.link.status()["last_error"] or ""))
        with pytest.raises(LinkTimeout, match="AUTH_FAILED"):
            await p.link.wait_connected(0.2)
        assert not p.link.connected
        with pytest.raises(LinkDown):
            await p.link.read(TARGET, 0, 0, 512)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("authentication failed for 127.0.0.1:" in m and "'A'" in m for m in warnings), warnings
        assert p.handler.calls == [] and all(not v.origins for v in p.handler.volumes.values())
    finally:
        await p.link.close()
        await p.server.close()


async def test_unknown_array_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="storaged.remote.link")
    handler = FakeHandler()
    server = LinkServer("B", "uuid-b", {"A": SECRET}, handler)
    _h, port = await server.start("127.0.0.1", 0)
    link = PeerLink("Mallory", "uuid-m", "B", "127.0.0.1", port, SECRET, backoff_initial=0.05)
    link.start()
    try:
        await wait_for(lambda: "AUTH_FAILED" in (link.status()["last_error"] or ""))
        assert any("'Mallory'" in r.getMessage() for r in caplog.records)
    finally:
        await link.close()
        await server.close()


@pytest.mark.parametrize("client, server", [((3, 4), (2, 2)),
                                            ((1, 1), (2, 2)),   # a v1 client (no frame tags) meets v2
                                            ((2, 2), (1, 1))])  # a v2 client meets a v1 server
async def test_wrong_protocol_version_refused(client: tuple[int, int], server: tuple[int, int]) -> None:
    """Both ends name their ranges in the refusal, and the client reports it (no hang)."""
    p = await make_pair(versions=client, backoff_initial=0.05, server_kw={"versions": server})
    p.link.start()
    try:
        await wait_for(lambda: "UNSUPPORTED_VERSION" in (p.link.status()["last_error"] or ""))
        assert not p.link.connected
        err = p.link.status()["last_error"]
        assert f"{client[0]}..{client[1]}" in err and f"{server[0]}..{server[1]}" in err
    finally:
        await p.link.close()
        await p.server.close()


async def test_backpressure_bounds_server_inflight() -> None:
    p = await make_pair(server_kw={"max_inflight_per_connection": 4}, max_inflight=100)
    vol = p.handler.volumes[(TARGET, 0)]
    vol.delay = 0.02
    p.link.start()
    try:
        await p.link.wait_connected(5)
        results = await asyncio.gather(*(p.link.read(TARGET, 0, i * 512, 512) for i in range(100)))
        assert all(r == bytes(512) for r in results)
        (conn,) = p.server.status()
        assert vol.max_running == 4 and conn["max_inflight_seen"] <= 4 and conn["requests"] >= 100
    finally:
        await p.link.close()
        await p.server.close()


@dataclass
class RawPeer:
    """A client on a bare socket, through the handshake: ``tx`` seals what it sends, ``reader``
    checks what it receives."""

    r: asyncio.StreamReader
    w: asyncio.StreamWriter
    tx: FrameMac
    reader: FrameReader

    def send(self, frame: list[Any]) -> None:
        self.w.write(join(self.tx.seal(frame)))

    async def frames_until_eof(self) -> list[Any]:
        self.reader.feed(await asyncio.wait_for(self.r.read(), 5))
        frames = []
        while (f := self.reader.next_frame()) is not None:
            frames.append(f)
        return frames


async def _raw_authenticated(port: int) -> RawPeer:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    hs = ClientHandshake("A", "uuid-a", "B", SECRET)
    w.write(join(hs.hello()))
    fr = FrameReader.handshake()
    while not hs.done:
        fr.feed(await r.read(65536))
        while not hs.done and (f := fr.next_frame()) is not None:
            w.write(join(hs.receive(f)))
    tx, rx = hs.session_keys()
    assert hs.version is not None
    fr.authenticated(hs.version, FrameMac(rx))
    return RawPeer(r, w, FrameMac(tx), fr)


async def test_garbage_from_authenticated_peer_closes_only_that_connection(pair: Pair) -> None:
    p = await _raw_authenticated(pair.port)
    w = p.w
    p.send(encode_frame(FrameType.PING, request_id=5))
    w.write(b"\x00" * 64)
    frames = await p.frames_until_eof()  # until EOF: the server closed
    assert [f.type for f in frames] == [FrameType.PONG, FrameType.ERROR]
    assert frames[1].status == Status.BAD_REQUEST
    w.close()
    assert await pair.link.read(TARGET, 0, 0, 512) == bytes(512)  # the other connection is fine
    assert pair.link.status()["reconnects"] == 0


async def test_data_request_over_raw_socket_with_bad_payload(pair: Pair) -> None:
    p = await _raw_authenticated(pair.port)
    bad = encode_data_header(TARGET, 0, "", 0, 100) + b"short"
    p.send(encode_frame(FrameType.REQUEST, opcode=Opcode.WRITE, request_id=1, payload=bad))
    p.reader.feed(await asyncio.wait_for(p.r.read(65536), 5))
    f = p.reader.next_frame()
    assert f is not None and f.type == FrameType.RESPONSE and f.status == Status.BAD_REQUEST
    p.w.close()


async def test_server_handshake_timeout() -> None:
    server = LinkServer("B", "uuid-b", {"A": SECRET}, FakeHandler(), handshake_timeout=0.2)
    _h, port = await server.start("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        out = await asyncio.wait_for(r.read(), 5)
        fr = FrameReader()
        fr.feed(out)
        f = fr.next_frame()
        assert f is not None and f.type == FrameType.ERROR and f.status == Status.TIMEOUT
        w.close()
    finally:
        await server.close()


async def test_keepalive_declares_a_silent_peer_dead() -> None:
    """A peer that authenticates and then never answers (hung, or a dead path)."""
    conns: list[asyncio.StreamWriter] = []

    async def mute_server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)
        hs = ServerHandshake("B", "uuid-b", {"A": SECRET})
        fr = FrameReader()
        while True:
            data = await r.read(65536)
            if not data:
                return
            if hs.done:
                continue  # swallow everything, answer nothing
            fr.feed(data)
            while not hs.done and (f := fr.next_frame()) is not None:
                w.write(join(hs.receive(f)))

    srv = await asyncio.start_server(mute_server, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    link = PeerLink("A", "uuid-a", "B", "127.0.0.1", port, SECRET, keepalive=0.05, keepalive_timeout=0.3,
                    io_timeout=30, backoff_initial=5.0)
    link.start()
    try:
        await link.wait_connected(5)
        pending = asyncio.create_task(link.read(TARGET, 0, 0, 512))
        with pytest.raises(LinkDown):
            await asyncio.wait_for(pending, 5)  # well before io_timeout
        assert "keepalive" in (link.status()["last_error"] or "")
    finally:
        await link.close()
        for w in conns:
            w.close()
        srv.close()


async def test_rtt_and_status_fields(pair: Pair) -> None:
    pair.link.keepalive = 0.05
    await wait_for(lambda: pair.link.status()["rtt_ms"] is not None)
    st = pair.link.status()
    assert set(st) >= {"peer", "address", "state", "since", "rtt_ms", "reconnects", "last_error", "inflight",
                       "requests", "bytes_in", "bytes_out"}
    assert st["address"] == f"127.0.0.1:{pair.port}" and st["rtt_ms"] >= 0


async def test_link_close_fails_inflight(pair: Pair) -> None:
    task = asyncio.create_task(pair.link.call("sleep", {"seconds": 10}))
    await wait_for(lambda: pair.handler.running == 1)
    await pair.link.close()
    with pytest.raises(LinkDown):
        await task
    assert pair.link.status()["state"] == "down"


def test_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        p = await make_pair(backoff_initial=0.05, backoff_max=0.2)
        p.link.start()
        try:
            await p.link.wait_connected(5)
            data = os.urandom(8 << 20)
            await p.link.write(TARGET, 0, 0, data)
            assert await p.link.read(TARGET, 0, 0, 8 << 20) == data
            got = await asyncio.gather(*(p.link.read(TARGET, 0, i << 20, 1 << 20) for i in range(8)))
            assert b"".join(got) == data
            await p.server.close()
            await wait_for(lambda: not p.link.connected)
            server2 = LinkServer("B", "uuid-b", {"A": SECRET}, p.handler)
            await server2.start("127.0.0.1", p.port)
            await p.link.wait_connected(5)
            assert await p.link.read(TARGET, 0, 0, 4096) == data[:4096]
            await server2.close()
        finally:
            await p.link.close()
            await p.server.close()

    uvloop.run(scenario())

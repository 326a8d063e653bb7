"""The fault proxy over real sockets on 127.0.0.1, in front of an echo server; one test forwards
into a pair of network namespaces (root only).

Timed assertions are only lower bounds on faults the proxy injects (a delay it adds cannot be
undercut); every wait is bounded so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storaged.faultproxy import FaultProxy, Faults

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LOCAL = "127.0.0.1"


@dataclass
class EchoServer:
    """Echoes every byte back; on EOF closes. Records how each connection ended."""

    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    ends: list[tuple[int, str]] = field(default_factory=list)  # (bytes received, "eof" | "reset")
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        got, how = 0, "eof"
        try:
            while data := await reader.read(65536):
                got += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            how = "reset"
        finally:
            self.ends.append((got, how))
            self.ended.set()
            writer.close()

    async def start(self, sock: object = None) -> EchoServer:
        if sock is None:
            self.server = await asyncio.start_server(self.handle, LOCAL, 0)
        else:
            self.server = await asyncio.start_server(self.handle, sock=sock)  # type: ignore[arg-type]
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def wait_ends(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.ends) < n:
                self.ended.clear()
                await self.ended.wait()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await EchoServer().start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    p = FaultProxy((LOCAL, 0), (LOCAL, echo.port), Faults(), seed=1)
    await p.start()
    yield p
    await p.close()


async def connect(p: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert p.address is not None
    return await asyncio.open_connection(*p.address)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                     timeout: float = 10.0) -> bytes:
    async with asyncio.timeout(timeout):
        writer.write(data)
        await writer.drain()
        return await reader.readexactly(len(data))


async def transfer(p: FaultProxy, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send payload while reading the echo (so neither side's buffers fill), half-close, read to EOF."""
    reader, writer = await connect(p)

    async def send() -> None:
        for i in range(0, len(payload), 50_000):
            writer.write(payload[i:i + 50_000])
            await writer.drain()
        writer.write_eof()

    try:
        async with asyncio.timeout(timeout):
            sender = asyncio.create_task(send())
            got = await reader.read(-1)
            await sender
            return got
    finally:
        writer.close()


async def wait_until(cond: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


# -- data path ---------------------------------------------------------------------------------------


async def test_data_integrity_random_sizes_concurrent(proxy: FaultProxy) -> None:
    proxy.faults.set(jitter=0.002)  # exercise the queue, not just a pass-through
    rng = random.Random(42)
    payloads = [rng.randbytes(n) for n in [0, 1, 1500, 65535, 65537, 300_001, 2_000_003] +
                [rng.randrange(1, 500_000) for _ in range(5)]]
    results = await asyncio.gather(*(transfer(proxy, data) for data in payloads))
    for data, got in zip(payloads, results):
        assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    total = sum(map(len, payloads))
    await wait_until(lambda: proxy.stats.active == 0)
    s = proxy.stats
    assert (s.bytes_c2s, s.bytes_s2c) == (total, total)
    assert (s.accepted, s.closed, s.cut, s.refused) == (len(payloads), len(payloads), 0, 0)


async def test_added_delay_is_at_least_configured(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer, b"warm-up")
    proxy.faults.set(delay=0.1)  # both ways: a round trip crosses the proxy twice
    t0 = time.monotonic()
    await round_trip(reader, writer, b"ping")
    assert time.monotonic() - t0 >= 0.2
    proxy.faults.set("s2c", delay=0.0)  # changed on the fly, one direction only
    t0 = time.monotonic()
    await round_trip(reader, writer, b"ping")
    assert time.monotonic() - t0 >= 0.1
    writer.close()


async def test_loss_penalty_shows_up_as_latency(proxy: FaultProxy) -> None:
    proxy.faults.set("c2s", loss=1.0, loss_penalty=0.15)
    reader, writer = await connect(proxy)
    t0 = time.monotonic()
    assert await round_trip(reader, writer, b"x" * 100) == b"x" * 100
    assert time.monotonic() - t0 >= 0.15
    assert proxy.stats.penalties >= 1
    writer.close()


async def test_bandwidth_limit_makes_transfer_longer(proxy: FaultProxy) -> None:
    size, rate = 200_000, 400_000
    proxy.faults.set("c2s", bandwidth=rate)
    t0 = time.monotonic()
    data = os.urandom(size)
    assert await transfer(proxy, data) == data
    burst = proxy.faults.c2s.burst_bytes()
    assert time.monotonic() - t0 >= (size - burst) / rate  # lower bound only


async def test_stall_holds_bytes_then_resume_delivers_in_order(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer, b"before")
    proxy.faults.set(stall=True)
    parts = [os.urandom(random.randrange(1, 40_000)) for _ in range(20)]
    for part in parts:
        writer.write(part)
        await writer.drain()
    await wait_until(lambda: proxy.queued()["c2s"] == sum(map(len, parts)))
    with pytest.raises(TimeoutError):  # held: the link hangs, it does not fail
        async with asyncio.timeout(0.3):
            await reader.read(1)
    assert proxy.stats.active == 1 and echo.ends == []
    proxy.faults.set(stall=False)
    async with asyncio.timeout(10):
        assert await reader.readexactly(sum(map(len, parts))) == b"".join(parts)
    assert proxy.queued() == {"c2s": 0, "s2c": 0}
    writer.close()


async def test_stall_backpressures_the_sender(echo: EchoServer) -> None:
    async with FaultProxy((LOCAL, 0), (LOCAL, echo.port), Faults.symmetric(stall=True),
                          max_buffer=64 << 10) as p:
        reader, writer = await connect(p)
        writer.write(os.urandom(32 << 20))  # far more than the proxy holds plus socket buffers
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await writer.drain()
        assert p.queued()["c2s"] <= (64 << 10) + 65536
        writer.transport.abort()


# -- connections ---------------------------------------------------------------------------------------


async def test_cut_resets_both_sides_and_new_connections_work(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer, b"hello")
    assert proxy.cut() == 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(5):
            await reader.readexactly(1)
    await echo.wait_ends(1)
    assert echo.ends[0][1] == "reset"  # SO_LINGER 0: an RST, not a FIN
    writer.close()
    await wait_until(lambda: proxy.stats.active == 0)
    assert (proxy.stats.cut, proxy.stats.closed) == (1, 1)

    reader, writer = await connect(proxy)  # the link is back at once (cut is not refuse)
    assert await round_trip(reader, writer, b"again") == b"again"
    assert proxy.stats.accepted == 2 and proxy.stats.active == 1
    writer.close()


async def test_cut_while_stalled_discards_held_bytes(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer, b"up")
    proxy.faults.set("c2s", stall=True)
    writer.write(b"lost in the link")
    await writer.drain()
    await wait_until(lambda: proxy.queued()["c2s"] > 0)
    proxy.cut()
    await echo.wait_ends(1)
    assert echo.ends == [(2, "reset")]
    writer.close()


async def test_refuse_resets_new_connections_only(proxy: FaultProxy, echo: EchoServer) -> None:
    old_r, old_w = await connect(proxy)
    await round_trip(old_r, old_w, b"old")
    proxy.faults.refuse = True
    reader, writer = await connect(proxy)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await round_trip(reader, writer, b"refused?", timeout=5)
    writer.close()
    assert proxy.stats.refused == 1 and echo.connections == 1  # never reached the server
    assert await round_trip(old_r, old_w, b"still up") == b"still up"  # existing ones untouched
    proxy.faults.refuse = False
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"welcome") == b"welcome"
    writer.close()
    old_w.close()


async def test_drop_after_bytes_breaks_connection_mid_stream(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.faults.set("c2s", drop_after_bytes=10_000)
    reader, writer = await connect(proxy)
    data = os.urandom(50_000)
    writer.write(data)
    got = b""
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(5):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise asyncio.IncompleteReadError(got, None)
                got += chunk
    await echo.wait_ends(1)
    assert echo.ends[0] == (10_000, "reset")  # exactly N bytes reached the server, then an RST
    assert data.startswith(got) and len(got) <= 10_000
    assert proxy.stats.bytes_c2s == 10_000 and (proxy.stats.cut, proxy.stats.dropped) == (1, 1)
    writer.close()


async def test_unreachable_upstream_resets_client() -> None:
    free = await EchoServer().start()
    port = free.port
    await free.close()  # nothing listens there now
    async with FaultProxy((LOCAL, 0), (LOCAL, port), connect_timeout=2) as p:
        reader, writer = await connect(p)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await round_trip(reader, writer, b"anyone?", timeout=5)
        writer.close()
        assert p.stats.upstream_errors == 1 and p.stats.active == 0


async def test_close_ends_connections_and_stops_listening(echo: EchoServer) -> None:
    p = FaultProxy((LOCAL, 0), (LOCAL, echo.port), Faults.symmetric(stall=True))
    await p.start()
    reader, writer = await connect(p)
    writer.write(b"held")
    await writer.drain()
    await wait_until(lambda: p.queued()["c2s"] == 4)
    async with asyncio.timeout(5):
        await p.close()
        try:
            assert await reader.read() == b""  # closed (what was held is not forwarded)
        except ConnectionResetError:
            pass  # also fine: the kernel resets when it closes a socket with unread bytes
    await echo.wait_ends(1)
    assert p.stats.active == 0 and echo.ends == [(0, "eof")]
    with pytest.raises(OSError):
        await connect(p)
    writer.close()


# -- command line ---------------------------------------------------------------------------------------


async def test_cli_stdin_and_control_port(echo: EchoServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "storaged.faultproxy",
        "--listen", f"{LOCAL}:0", "--upstream", f"{LOCAL}:{echo.port}", "--delay", "0.05",
        "--control", f"{LOCAL}:0", cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    out: list[str] = []

    async def line_matching(pattern: str) -> re.Match[str]:
        async with asyncio.timeout(15):
            while True:
                line = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
                assert line, f"faultproxy exited: {''.join(out)}"
                out.append(line)
                if m := re.search(pattern, line):
                    return m

    try:
        port = int((await line_matching(r"listening on \S+:(\d+)")).group(1))
        cport = int((await line_matching(r"control on \S+:(\d+)")).group(1))
        reader, writer = await asyncio.open_connection(LOCAL, port)
        t0 = time.monotonic()
        assert await round_trip(reader, writer, b"via cli") == b"via cli"
        assert time.monotonic() - t0 >= 0.1

        creader, cwriter = await asyncio.open_connection(LOCAL, cport)

        async def control(cmd: str) -> str:
            cwriter.write(cmd.encode() + b"\n")
            async with asyncio.timeout(5):
                return (await creader.readline()).decode().strip()

        assert await control("delay 0") == "ok"
        assert await control("stall") == "ok"
        writer.write(b"held")
        await writer.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
        assert await control("resume") == "ok"
        async with asyncio.timeout(5):
            assert await reader.readexactly(4) == b"held"
        assert (await control("stats")).startswith("stats accepted=1 active=1")
        assert (await control("bogus")).startswith("error:")

        proc.stdin.write(b"cut\n")  # the same commands on stdin, answered on stdout
        await proc.stdin.drain()
        assert "ok cut 1 connection(s)" in (await line_matching(r"^ok cut")).string
        proc.stdin.write(b"stats\n")
        await proc.stdin.drain()
        assert "cut=1" in (await line_matching(r"^stats ")).string
        writer.close()

        assert await control("shutdown") == "ok shutting down"
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
        cwriter.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- network namespaces ------------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: A (10.99.0.1) <-> B (10.99.0.2). The host namespace gets no
    interface and no address; the proxy reaches in through sockets created in A."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
    a, b = f"fpa{tag}", f"fpb{tag}"  # also the interface names (<= 15 chars)
    created: list[str] = []
    try:
        try:
            for ns in (a, b):
                _ip("netns", "add", ns)
                created.append(ns)
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"ip netns unavailable: {exc}")
        _ip("link", "add", a, "netns", a, "type", "veth", "peer", "name", b, "netns", b)
        _ip("-n", a, "addr", "add", "10.99.0.1/24", "dev", a)
        _ip("-n", b, "addr", "add", "10.99.0.2/24", "dev", b)
        for ns in (a, b):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", ns, "up")
        yield a, b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


async def test_forward_into_namespace_and_link_down_up(netns_pair: tuple[str, str]) -> None:
    from storaged.faultproxy.netns import socket_in_netns

    ns_a, ns_b = netns_pair
    sock = socket_in_netns(ns_b)
    sock.bind(("10.99.0.2", 0))
    sock.listen()
    server = await EchoServer().start(sock)
    p = FaultProxy((LOCAL, 0), ("10.99.0.2", server.port), upstream_netns=ns_a, connect_timeout=1.0)
    await p.start()
    try:
        reader, writer = await connect(p)  # host 127.0.0.1 -> proxy -> (ns A) veth -> (ns B) server
        assert await round_trip(reader, writer, b"across the link") == b"across the link"

        _ip("-n", ns_a, "link", "set", ns_a, "down")
        new_r, new_w = await connect(p)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError, TimeoutError)):
            await round_trip(new_r, new_w, b"link down?", timeout=3)  # reset (unreachable) or timeout
        new_w.close()
        assert p.stats.upstream_errors >= 1
        with pytest.raises(TimeoutError):  # an open connection just stops getting answers
            await round_trip(reader, writer, b"anyone there?", timeout=0.5)

        _ip("-n", ns_a, "link", "set", ns_a, "up")
        async with asyncio.timeout(15):
            while True:  # the link is back once a fresh connection gets through
                r, w = await connect(p)
                try:
                    assert await round_trip(r, w, b"link up", timeout=2) == b"link up"
                    break
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                    await asyncio.sleep(0.2)
                finally:
                    w.close()
        writer.transport.abort()
    finally:
        await p.close()
        await server.close()


# -- the real remote link through the proxy ------------------------------------------------------------------


async def test_remote_link_through_proxy_stall_and_down_up() -> None:
    from storaged.remote.api import LinkDown, LinkTimeout
    from storaged.remote.link import LinkServer, PeerLink

    from tests.unit.remote.helpers import TARGET, FakeHandler

    secret = "s3cret-shared-by-a-and-b"
    server = LinkServer("B", "uuid-b", {"A": secret}, FakeHandler())
    _, b_port = await server.start(LOCAL, 0)
    p = FaultProxy((LOCAL, 0), (LOCAL, b_port), Faults.symmetric(delay=0.01))
    host, port = await p.start()
    link = PeerLink("A", "uuid-a", "B", host, port, secret, io_timeout=0.5, keepalive=0.2,
                    keepalive_timeout=10, backoff_initial=0.05, backoff_max=0.2)
    link.start()
    try:
        await link.wait_connected(5)
        data = os.urandom(64 << 10)
        await link.write(TARGET, 0, 0, data)
        assert await link.read(TARGET, 0, 0, len(data)) == data

        p.faults.set(stall=True)  # hung link: the request times out, the connection stays
        with pytest.raises(LinkTimeout):
            await link.read(TARGET, 0, 0, 512)
        assert p.stats.active == 1
        p.faults.set(stall=False)
        assert await link.read(TARGET, 0, 0, 4096) == data[:4096]

        p.faults.refuse = True  # link down
        p.cut()
        await wait_until(lambda: not link.connected)
        with pytest.raises(LinkDown):
            await link.read(TARGET, 0, 0, 512)
        await wait_until(lambda: p.stats.refused >= 1)  # it keeps trying
        p.faults.refuse = False  # link up
        await link.wait_connected(5)
        assert await link.read(TARGET, 0, 0, 4096) == data[:4096]
        assert link.status()["reconnects"] >= 1 and p.stats.cut == 1
    finally:
        await link.close()
        await p.close()
        await server.close()

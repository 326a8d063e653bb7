"""An attacker on the path between two arrays (a relay in the middle of a real PeerLink and
LinkServer), and hostile peers that never authenticate.

The relay speaks no protocol beyond the frame header: it alters a WRITE and fixes its CRC, injects
a well-formed WRITE, or replays a recorded one. Each must be refused (connection closed, a log
line naming the reason) and never reach the volume. No timed assertions: waits are bounded only
so that a hang fails.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from crc32c import crc32c

from storaged.remote.api import LinkDown
from storaged.remote.link import LinkServer, PeerLink
from storaged.remote.protocol import FrameType, Opcode, Status, encode_data_header, encode_frame
from tests.unit.remote.helpers import TARGET, FakeHandler, join

SECRET = "s3cret-shared-by-a-and-b"
LOGGER = "storaged.remote.link"


class Relay:
    """Forwards bytes both ways; can alter the next client frame, record and inject."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.to_server: asyncio.StreamWriter | None = None
        self.recording: bytearray | None = None
        self.alter_next = False
        self._held = bytearray()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()

    def inject(self, data: bytes) -> None:
        assert self.to_server is not None
        self.to_server.write(data)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.to_server = sw
        self._writers += [cw, sw]
        await asyncio.gather(self._pump(cr, sw, True), self._pump(sr, cw, False), return_exceptions=True)
        cw.close()
        sw.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, client_to_server: bool) -> None:
        while data := await r.read(1 << 20):
            if client_to_server and self.recording is not None:
                self.recording += data
            if client_to_server and self.alter_next:
                self._held += data
                data = self._altered()
            w.write(data)
        w.close()

    def _altered(self) -> bytes:
        """Once a whole frame is held: flip its last payload byte, fix the CRC, release it."""
        held = self._held
        if len(held) < 28:
            return b""
        (length,) = struct.unpack_from(">I", held, 20)
        for hsize in (28, 44):  # the header is followed by a tag in v2, not in v1
            end = hsize + length
            if len(held) >= end and crc32c(bytes(held[hsize:end]), crc32c(bytes(held[:24]))) == \
                    struct.unpack_from(">I", held, 24)[0]:
                held[end - 1] ^= 0xFF
                struct.pack_into(">I", held, 24, crc32c(bytes(held[hsize:end]), crc32c(bytes(held[:24]))))
                self.alter_next = False
                out, self._held = bytes(held), bytearray()
                return out
        return b""


@dataclass
class Setup:
    server: LinkServer
    link: PeerLink
    relay: Relay
    handler: FakeHandler
    ups: list[bool]

    async def stored(self, length: int) -> bytes:
        return bytes(await self.handler.volumes[(TARGET, 0)].store.read(0, length))


@pytest.fixture
async def mitm() -> AsyncIterator[Setup]:
    handler = FakeHandler()
    # long keepalives: no PING/PONG crosses the relay unless a test sends it
    server = LinkServer("B", "uuid-b", {"A": SECRET}, handler, keepalive=60)
    _h, port = await server.start("127.0.0.1", 0)
    relay = Relay(port)
    rport = await relay.start()
    link = PeerLink("A", "uuid-a", "B", "127.0.0.1", rport, SECRET, keepalive=60, keepalive_timeout=120,
                    backoff_initial=5.0)
    ups: list[bool] = []
    link.add_listener(ups.append)
    link.start()
    await link.wait_connected(5)
    await wait_for(lambda: link.status()["rtt_ms"] is not None)  # the first PING is through: all quiet now
    yield Setup(server, link, relay, handler, ups)
    await link.close()
    await relay.close()
    await server.close()


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def mac_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "MAC mismatch" in r.getMessage()]


def bad_frames(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "bad frame" in r.getMessage()]


async def test_altered_frame_rejected_and_logged(mitm: Setup, caplog: pytest.LogCaptureFixture) -> None:
    mitm.relay.alter_next = True
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(LinkDown):
        await asyncio.wait_for(mitm.link.write(TARGET, 0, 0, b"\xaa" * 4096), 5)
    assert await mitm.stored(4096) == bytes(4096)  # neither the sent nor the altered data
    assert mac_failures(caplog) and mitm.ups == [True, False]


@pytest.mark.parametrize("tag", [b"", bytes(range(16))], ids=["untagged", "forged-tag"])
async def test_injected_write_rejected(mitm: Setup, caplog: pytest.LogCaptureFixture, tag: bytes) -> None:
    """A WRITE with a valid CRC and the negotiated version, slipped in while the link is idle,
    with no tag or a made-up one; a genuine READ follows it."""
    version = mitm.link.status()["version"]
    head, *payload = encode_frame(FrameType.REQUEST, opcode=Opcode.WRITE, request_id=777, version=version,
                                  payload=[encode_data_header(TARGET, 0, "", 0, 512), b"\x66" * 512])
    vol = mitm.handler.volumes[(TARGET, 0)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mitm.relay.inject(bytes(head) + tag + join(payload))
        try:
            await asyncio.wait_for(mitm.link.read(TARGET, 0, 512, 512), 5)
        except LinkDown:
            pass
        await wait_for(lambda: False in mitm.ups or len(vol.origins) > 1)
    assert await mitm.stored(512) == bytes(512)
    assert bad_frames(caplog) and not mitm.link.connected


async def test_replayed_write_rejected(mitm: Setup, caplog: pytest.LogCaptureFixture) -> None:
    mitm.relay.recording = bytearray()
    await mitm.link.write(TARGET, 0, 0, b"A" * 512)
    recorded, mitm.relay.recording = bytes(mitm.relay.recording), None
    await mitm.link.write(TARGET, 0, 0, b"B" * 512)
    vol = mitm.handler.volumes[(TARGET, 0)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mitm.relay.inject(recorded)  # the first WRITE again, byte for byte
        await wait_for(lambda: False in mitm.ups or len(vol.origins) > 2)
    assert await mitm.stored(512) == b"B" * 512
    assert mac_failures(caplog) and not mitm.link.connected


async def test_link_works_through_the_relay_when_nobody_tampers(mitm: Setup) -> None:
    await mitm.link.write(TARGET, 0, 0, b"ok" * 40000)
    assert await mitm.link.read(TARGET, 0, 0, 80000) == b"ok" * 40000
    assert mitm.ups == [True]


# --- peers that never authenticate ----------------------------------------------------------


async def test_preauth_frame_over_the_cap_closes_at_once() -> None:
    """A HELLO announcing a maximum-size payload is refused from its header, long before the
    handshake timeout, and nothing is buffered for it."""
    server = LinkServer("B", "uuid-b", {"A": SECRET}, FakeHandler(), handshake_timeout=60)
    _h, port = await server.start("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        head = bytearray(join(encode_frame(FrameType.HELLO, payload=b"{}"))[:28])
        struct.pack_into(">I", head, 20, (16 << 20) + (64 << 10))
        w.write(bytes(head))
        out = await asyncio.wait_for(r.read(), 5)  # EOF: the server closed
        assert out[5] == FrameType.ERROR and struct.unpack_from(">H", out, 8)[0] == Status.BAD_REQUEST
        w.close()
    finally:
        await server.close()


async def test_unauthenticated_connections_are_bounded() -> None:
    server = LinkServer("B", "uuid-b", {"A": SECRET}, FakeHandler(), handshake_timeout=60, max_unauthenticated=4)
    _h, port = await server.start("127.0.0.1", 0)
    squatters = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
    link = PeerLink("A", "uuid-a", "B", "127.0.0.1", port, SECRET, backoff_initial=0.05, backoff_max=0.1)
    try:
        closed = 0
        for r, _w in squatters:  # the extra ones are closed at once; the first four are kept
            try:
                done = await asyncio.wait_for(r.read(), 0.5) == b""
            except ConnectionResetError:
                done = True
            except TimeoutError:
                done = False
            closed += done
        assert closed == 6 and server.unauthenticated == 4 and server.refused == 6
        link.start()
        await wait_for(lambda: (link.status()["last_error"] or "") != "")  # refused while they squat
        assert not link.connected
        for _r, w in squatters:
            w.close()
        await link.wait_connected(5)
        assert server.unauthenticated == 0
    finally:
        await link.close()
        await server.close()

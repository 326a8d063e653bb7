"""A login that does not finish within ``login_timeout`` is dropped once, counted once.

A client that stops reading keeps the target's write buffer full, so a plain close waits for the
buffer to drain and the connection stays registered: every tick then counted it again as a timed-out
login (storaged_login_failures_total{reason="timeout"} rising once a second, a log line each time).
"""

from __future__ import annotations

import asyncio
import socket

from storaged.backstore.memory import MemoryBackstore
from storaged.iscsi.pdu import PDU, Opcode, encode_bytes, format_text
from storaged.iscsi.portal import Portal, TargetInfo
from storaged.iscsi.transport import IscsiServer
from storaged.scsi.lu import LogicalUnit
from storaged.scsi.target import ScsiTarget

TARGET = "iqn.2026-11.test:t"


def _login_with_many_unknown_keys() -> bytes:
    keys = [("InitiatorName", "iqn.2026-11.test:slow"), ("TargetName", TARGET), ("AuthMethod", "None"),
            ("SessionType", "Normal")] + [(f"X-com.example.k{i}", "1") for i in range(400)]
    return encode_bytes(PDU(Opcode.LOGIN_REQUEST, flags=0x00, immediate=True, lun=bytes([0x80, 1, 2, 3, 4, 5, 0, 0]),
                            itt=1, w24=1, data=format_text(keys)))


async def test_a_timed_out_login_of_a_client_that_does_not_read_is_counted_once_and_dropped() -> None:
    lu = LogicalUnit(MemoryBackstore(1 << 20), naa=bytes.fromhex("6005354f" + "00" * 12), serial="S")
    portal = Portal(targets={TARGET: TargetInfo(TARGET, luns=frozenset({0}))}, addresses=[], operational={})
    server = IscsiServer(portal, {TARGET: ScsiTarget(TARGET, {0: lu})}, login_timeout=1.0)
    host, port = await server.start("127.0.0.1", 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        pdu = _login_with_many_unknown_keys()
        for _ in range(2000):  # each answered with a NotUnderstood per key, which nobody reads
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, pdu), 0.5)
            except (TimeoutError, OSError):
                break
        await asyncio.sleep(4.5)  # several ticks past the timeout
        assert portal.login_failures.get("timeout") == 1, portal.login_failures
        assert not server.connections  # dropped, not left waiting for a reader that never comes
    finally:
        sock.close()
        await server.close(grace=0.1)

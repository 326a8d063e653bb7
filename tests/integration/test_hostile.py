"""A hostile client against a live daemon: garbage, lies and abuse never crash it or stall others."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiSession
from storaged.iscsi.pdu import PDU, Opcode, PDUReader, encode_bytes, format_text

from .conftest import TARGET, small_config
from .daemon import StoragedProcess

pytestmark = pytest.mark.integration


async def _raw(port: int, payload: bytes, read_timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(65536), read_timeout)
        except (TimeoutError, ConnectionError):
            return b""
    finally:
        writer.close()


def _login(keys: list[tuple[str, str]], flags: int = 0x87) -> bytes:
    return encode_bytes(PDU(Opcode.LOGIN_REQUEST, flags=flags, immediate=True, lun=bytes([0x80, 1, 2, 3, 4, 5, 0, 0]),
                            itt=1, w24=1, data=format_text(keys)))


async def _healthy(port: int) -> None:
    s = IscsiSession()
    await s.login("127.0.0.1", port, TARGET)
    r = await s.scsi(0, bytes(6))
    assert r.status in (0, 2)
    await s.logout()


async def test_garbage_and_malformed_pdus_do_not_hurt_the_daemon(storaged: StoragedProcess) -> None:
    port = storaged.port
    victim = IscsiSession()
    await victim.login("127.0.0.1", port, TARGET)
    attacks = [
        os.urandom(4096),
        b"\xff" * 48,
        # a BHS announcing a 16 MiB data segment during login
        bytes([0x43, 0x87, 0, 0, 0, 0xFF, 0xFF, 0xFF]) + bytes(40),
        # login text that is not key=value
        encode_bytes(PDU(Opcode.LOGIN_REQUEST, flags=0x87, immediate=True, itt=1, data=b"\xff\xfe garbage\0")),
        # full feature PDU before login
        encode_bytes(PDU(Opcode.SCSI_COMMAND, flags=0xC1, itt=5, w20=512, w24=1)),
        _login([("InitiatorName", "iqn.2026-11.test:evil"), ("TargetName", TARGET), ("AuthMethod", "None"),
                ("MaxRecvDataSegmentLength", "99999999999")]),
        _login([("InitiatorName", "iqn.2026-11.test:evil"), ("TargetName", TARGET), ("SessionType", "Weird")]),
        _login([("InitiatorName", "iqn.2026-11.test:evil"), ("TargetName", TARGET)], flags=0xC7),  # T and C
        bytes(47),  # truncated header, then close
    ]
    for blob in attacks:
        await _raw(port, blob)
    # an abusive logged-in session: huge EDTL, bad Data-Out, unknown opcodes, CmdSN chaos
    evil = IscsiSession()
    await evil.login("127.0.0.1", port, TARGET, initiator="iqn.2026-11.test:evil")
    cdb = struct.unpack(">IIII", bytes([0x2A, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]).ljust(16, b"\0"))
    evil.send_pdu(PDU(Opcode.SCSI_COMMAND, flags=0xA1, itt=0x777, w20=0xFFFFFFF0, w24=evil.cmdsn,
                      w32=cdb[0], w36=cdb[1], w40=cdb[2], w44=cdb[3]))
    evil.send_pdu(PDU(Opcode.DATA_OUT, flags=0x80, itt=0x12345, w20=0xFFFFFFFF, data=bytes(512)))
    evil.send_pdu(PDU(0x1D, flags=0x80, itt=9))
    evil.send_pdu(PDU(Opcode.NOP_OUT, flags=0x80, itt=10, w20=0xFFFFFFFF, w24=0xDEAD))
    evil.send_raw(os.urandom(100))
    await asyncio.sleep(0.5)
    await evil.close()
    # the daemon is alive, the victim's session still works, new sessions work
    assert storaged.alive()
    assert (await victim.scsi(0, bytes(6))).status in (0, 2)
    await victim.logout()
    await _healthy(port)
    assert "Traceback" not in storaged.log


async def test_half_open_login_is_dropped_after_login_timeout(tmp_path: Path) -> None:
    from .conftest import small_config

    from .sites import free_port

    cfg = small_config()
    cfg["iscsi"] = {"login_timeout": 2}
    metrics_port = free_port()
    cfg["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(b"\x43")  # one byte of a login, then silence
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 10)
        assert data == b""  # closed by the target
        writer.close()
        # the daemon's log arrives through a pipe: give the line a moment to be read
        assert proc.wait_log("login not finished within 2s"), proc.log
        # an operator sees it as a failed login (reason timeout), like a refused one
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'storaged_login_failures_total{reason="timeout"} 1.0' in text, text
    finally:
        proc.stop()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_write_bomb_gets_no_more_r2ts_than_the_window_and_no_buffers(tmp_path: Path) -> None:
    """128 + 64 WRITE(16) of 64 MiB without data, R2Ts and window ignored (the issue's bomb)."""
    cfg = small_config()
    cfg["iscsi"] = {"queue_depth": 128}
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        assert proc.proc is not None
        evil = IscsiSession()
        await evil.login("127.0.0.1", proc.port, TARGET, initiator="iqn.2026-11.test:evil")
        r2ts: list[PDU] = []
        evil._on_pdu = lambda pdu: r2ts.append(pdu) if pdu.opcode == Opcode.R2T else None  # type: ignore[method-assign]
        before = _rss_kib(proc.proc.pid)
        cdb = struct.unpack(">IIII", bytes([0x8A, 0]) + bytes(8) + (131072).to_bytes(4, "big") + bytes(2))
        for i in range(192):
            evil.send_pdu(PDU(Opcode.SCSI_COMMAND, flags=0xA1, itt=0x1000 + i, w20=64 << 20, w24=evil.cmdsn + i,
                              w32=cdb[0], w36=cdb[1], w40=cdb[2], w44=cdb[3]))
        await _healthy(proc.port)  # served while the bomb's commands sit in the target
        await asyncio.sleep(0.5)
        assert {p.itt for p in r2ts} <= {0x1000 + i for i in range(128)}  # none beyond the window
        assert _rss_kib(proc.proc.pid) - before < 64 << 10  # the old target held 64 MiB per command
        await evil.close()
        assert proc.alive() and "Traceback" not in proc.log
    finally:
        proc.stop()


async def test_non_ascii_chap_name_gets_a_login_response_not_a_traceback(tmp_path: Path) -> None:
    from .conftest import small_config as cfg_with

    proc = StoragedProcess(tmp_path / "data", cfg_with(chap={"username": "host1", "secret": "host1-secret-123"})).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        keys = [("InitiatorName", "iqn.2026-11.test:h"), ("TargetName", TARGET), ("AuthMethod", "CHAP")]
        writer.write(_login(keys, flags=0x01))
        writer.write(_login([("CHAP_A", "5")], flags=0x01))
        writer.write(_login([("CHAP_N", "hüst"), ("CHAP_R", "0x" + "00" * 16)], flags=0x81))
        await writer.drain()
        # Read whole PDUs until the third response (or the target closes): the first two carry data
        # segments, so a byte count says nothing about how many responses arrived.
        responses: list[PDU] = []
        reader_pdu = PDUReader()
        while len(responses) < 3:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            reader_pdu.feed(chunk)
            while (p := reader_pdu.next_pdu()) is not None:
                responses.append(p)
        writer.close()
        last = responses[-1]
        assert last.opcode == Opcode.LOGIN_RESPONSE and (last.w36 >> 16) == 0x0201
        assert proc.wait_log("refused (0201)") and "Traceback" not in proc.log, proc.log
    finally:
        proc.stop()

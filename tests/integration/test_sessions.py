"""Live-daemon behaviour driven by the project's own initiator: CHAP SHA-256, many sessions,
reinstatement, discovery ACLs, digests both ways."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storaged.iscsi.chap import ChapCredentials
from storaged.iscsi.initiator import IscsiSession, LoginRefused

from .conftest import TARGET, small_config
from .daemon import StoragedProcess

pytestmark = pytest.mark.integration

READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
TUR = bytes(6)


def write10(lba: int, blocks: int, fua: bool = False) -> bytes:
    return bytes([0x2A, 0x08 if fua else 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


async def test_chap_sha256_mutual_with_own_initiator(tmp_path: Path) -> None:
    creds = ChapCredentials("host1", "host1-secret-123", "array1", "array1-secret-456")
    cfg = small_config(chap={"username": creds.username, "secret": creds.secret,
                             "mutual_username": creds.mutual_username, "mutual_secret": creds.mutual_secret})
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        s = IscsiSession()
        await s.login("127.0.0.1", proc.port, TARGET, chap=creds, chap_algorithms=(7,))
        assert (await s.scsi(0, TUR)).status == 0
        await s.logout()
        assert proc.wait_log("CHAP: iqn.2026-11.io.storaged:initiator authenticated as host1"), proc.log
        wrong = IscsiSession()
        with pytest.raises(LoginRefused) as info:
            await wrong.login("127.0.0.1", proc.port, TARGET,
                              chap=ChapCredentials("host1", "wrong-secret-000"), chap_algorithms=(7,))
        assert info.value.status == 0x0201
    finally:
        proc.stop()


async def test_many_sessions_at_once_and_data_digests(storaged: StoragedProcess) -> None:
    sessions = [IscsiSession() for _ in range(12)]
    await asyncio.gather(*(s.login("127.0.0.1", storaged.port, TARGET, digests=True,
                                   initiator=f"iqn.2026-11.test:host{i}") for i, s in enumerate(sessions)))
    assert all(s.data_digest and s.header_digest for s in sessions)

    async def work(i: int, s: IscsiSession) -> None:
        payload = bytes([i]) * 4096 * 4
        assert (await s.scsi(0, write10(i * 8, 8), data_out=payload + payload)).status == 0
        got = await s.scsi(0, read10(i * 8, 8), read_length=8 * 512 * 8)
        assert got.status == 0 and got.data[: 8 * 512] == payload[: 8 * 512]

    await asyncio.gather(*(work(i, s) for i, s in enumerate(sessions)))
    await asyncio.gather(*(s.logout() for s in sessions))


async def test_session_reinstatement_by_isid_replaces_old_session(storaged: StoragedProcess) -> None:
    isid = bytes([0x80, 9, 9, 9, 9, 9])
    old = IscsiSession()
    await old.login("127.0.0.1", storaged.port, TARGET, isid=isid)
    new = IscsiSession()
    await new.login("127.0.0.1", storaged.port, TARGET, isid=isid)
    assert (await new.scsi(0, TUR)).status in (0, 2)
    with pytest.raises(Exception):
        await old.scsi(0, TUR, timeout=5)
    assert storaged.wait_log("session reinstatement"), storaged.log
    await new.logout()


async def test_large_write_uses_r2t_and_reads_back(storaged: StoragedProcess) -> None:
    s = IscsiSession()
    await s.login("127.0.0.1", storaged.port, TARGET)
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB: immediate + R2T bursts
    blocks = len(payload) // 512
    cdb = bytes([0x8A, 0]) + (100).to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"
    assert (await s.scsi(0, cdb, data_out=payload)).status == 0
    rcdb = bytes([0x88, 0]) + (100).to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"
    got = await s.scsi(0, rcdb, read_length=len(payload))
    assert got.status == 0 and got.data == payload
    await s.logout()


async def test_discovery_sendtargets_with_own_initiator(storaged: StoragedProcess) -> None:
    s = IscsiSession()
    await s.login("127.0.0.1", storaged.port, None)
    pairs = await s.text([("SendTargets", "All")])
    assert ("TargetName", TARGET) in pairs
    assert ("TargetAddress", f"127.0.0.1:{storaged.port},1") in pairs
    await s.logout()

"""The daemon as a process: default array, clean shutdown, file locking, a full file system."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiSession

from .conftest import TARGET, small_config
from .daemon import REPO, StoragedProcess

pytestmark = pytest.mark.integration


def write10(lba: int, data: bytes) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + (len(data) // 512).to_bytes(2, "big") + b"\0"


async def test_default_array_serves_its_luns(tmp_path: Path) -> None:
    proc = StoragedProcess(tmp_path / "data").start()  # no --config: the embedded default
    try:
        s = IscsiSession()
        await s.login("127.0.0.1", proc.port, "iqn.2026-11.io.storaged:default")
        r = await s.scsi(0, bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0", read_length=32)
        blocks = int.from_bytes(r.data[:8], "big") + 1
        assert blocks * int.from_bytes(r.data[8:12], "big") >= 1 << 30
        assert r.data[14] & 0x80  # LBPME: thin provisioned
        await s.logout()
        assert (tmp_path / "data" / "data0.img").exists()
    finally:
        assert proc.stop() == 0


async def test_sigterm_closes_sessions_and_exits_cleanly(storaged: StoragedProcess) -> None:
    s = IscsiSession()
    await s.login("127.0.0.1", storaged.port, TARGET)
    assert (await s.scsi(0, write10(0, bytes(4096)), data_out=os.urandom(4096))).status == 0
    assert storaged.stop() == 0
    assert "shutting down: closing sessions and syncing LUNs" in storaged.log
    assert "stopped" in storaged.log
    with pytest.raises(Exception):
        await s.scsi(0, bytes(6), timeout=5)
    await s.close()


def test_second_daemon_on_the_same_files_is_refused(storaged: StoragedProcess) -> None:
    assert storaged.config_path is not None
    run = subprocess.run([sys.executable, "-m", "storaged", "--config", str(storaged.config_path),
                          "--listen", "127.0.0.1:0", "--data-dir", str(storaged.data_dir)],
                         capture_output=True, text=True, timeout=30, cwd=str(REPO),
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 1
    assert "in use by another process" in run.stderr
    assert storaged.alive()


def test_bad_config_exits_2_and_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("array: {name: x}\ntargets:\n  - name: iqn.2026-11.t:x\n    luns: [{lun: 0, size: huge}]\n")
    run = subprocess.run([sys.executable, "-m", "storaged", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=30, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 2
    assert f"{cfg}: targets[0].luns[0].size: expected a size" in run.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_full_backing_file_system_gives_space_allocation_failed(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        proc = StoragedProcess(mnt / "data", small_config()).start()
        try:
            s = IscsiSession()
            await s.login("127.0.0.1", proc.port, TARGET)
            results = []
            for i in range(8):  # 8 x 512 KiB into a 2 MiB file system
                data = os.urandom(512 * 1024)
                results.append(await s.scsi(0, write10(i * 1024, data), data_out=data))
            full = [r for r in results if r.status != 0]
            assert full, "no write failed although the file system is full"
            assert all((r.sense_key, r.asc_ascq) == (0x07, (0x27, 0x07)) for r in full)
            # the daemon keeps serving: reads still work
            r = await s.scsi(0, bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), read_length=512)
            assert r.status == 0
            await s.logout()
        finally:
            proc.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)

"""Real initiators against a real storaged: libiscsi's iscsi-ls / iscsi-inq and qemu-img."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiSession

from .conftest import TARGET, require, small_config
from .daemon import StoragedProcess

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=timeout, check=check)


def test_iscsi_ls_discovers_target_and_luns(storaged: StoragedProcess) -> None:
    require("iscsi-ls")
    out = run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{storaged.port}").stdout
    assert f"Target:{TARGET} Portal:127.0.0.1:{storaged.port},1" in out
    # iscsi-ls prints the last LBA's byte offset rounded down: 64 MiB shows as 63M
    assert "Lun:0    Type:DIRECT_ACCESS (Size:63M)" in out
    assert "Lun:1    Type:DIRECT_ACCESS (Size:15M)" in out


def test_iscsi_inq_standard_and_device_identification(storaged: StoragedProcess) -> None:
    require("iscsi-inq")
    url = storaged.url(TARGET, 0)
    std = run("iscsi-inq", url).stdout
    assert "STORAGED" in std
    vpd83 = run("iscsi-inq", "-e", "1", "-c", "131", url).stdout
    assert "Designator Type:(3) NAA" in vpd83
    serial = run("iscsi-inq", "-e", "1", "-c", "128", url).stdout
    assert "Unit Serial Number:[" in serial


def test_naa_identifier_is_stable_across_restarts_and_differs_between_luns(tmp_path: Path) -> None:
    require("iscsi-inq")
    proc = StoragedProcess(tmp_path / "data", small_config()).start()
    try:
        first0 = run("iscsi-inq", "-e", "1", "-c", "131", proc.url(TARGET, 0)).stdout
        first1 = run("iscsi-inq", "-e", "1", "-c", "131", proc.url(TARGET, 1)).stdout
    finally:
        proc.stop()
    proc.start()
    try:
        again0 = run("iscsi-inq", "-e", "1", "-c", "131", proc.url(TARGET, 0)).stdout
    finally:
        proc.stop()
    assert first0 == again0
    assert first0 != first1


def test_qemu_img_convert_round_trip_is_byte_identical(storaged: StoragedProcess, tmp_path: Path) -> None:
    require("qemu-img")
    src = tmp_path / "src.raw"
    # 8 MiB with data, a hole and more data, so thin and thick regions both cross the wire
    with open(src, "wb") as f:
        f.write(os.urandom(3 << 20))
        f.seek(6 << 20)
        f.write(os.urandom(2 << 20))
    url = storaged.url(TARGET, 1)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url, timeout=120)
    back = tmp_path / "back.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back), timeout=120)
    data = back.read_bytes()
    assert len(data) == 16 << 20
    assert hashlib.sha256(data[: 8 << 20]).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert data[8 << 20 :] == bytes(8 << 20)


def test_qemu_img_info_reports_lun_size(storaged: StoragedProcess) -> None:
    require("qemu-img")
    out = run("qemu-img", "info", storaged.url(TARGET, 0)).stdout
    assert "64 MiB" in out


def test_chap_right_credentials_log_in_and_wrong_ones_are_refused(tmp_path: Path) -> None:
    require("iscsi-ls", "iscsi-inq")
    cfg = small_config(chap={"username": "host1", "secret": "host1-secret-123"})
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        ok = run("iscsi-inq", proc.url(TARGET, 0, auth="host1%host1-secret-123@"), check=False)
        assert ok.returncode == 0, ok.stderr
        assert "STORAGED" in ok.stdout
        bad = run("iscsi-inq", proc.url(TARGET, 0, auth="host1%wrong-secret-xyz@"), check=False)
        assert bad.returncode != 0
        none = run("iscsi-inq", proc.url(TARGET, 0), check=False)
        assert none.returncode != 0
        assert proc.wait_log("CHAP response from 'host1' does not match"), proc.log
    finally:
        proc.stop()


def test_mutual_chap_with_libiscsi(tmp_path: Path) -> None:
    require("iscsi-inq")
    cfg = small_config(chap={"username": "host1", "secret": "host1-secret-123",
                             "mutual_username": "array1", "mutual_secret": "array1-secret-456"})
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        url = proc.url(TARGET, 0, auth="host1%host1-secret-123@")
        ok = run("iscsi-inq", url + "?target_user=array1&target_password=array1-secret-456", check=False)
        assert ok.returncode == 0, ok.stderr
        bad = run("iscsi-inq", url + "?target_user=array1&target_password=not-the-array-pw", check=False)
        assert bad.returncode != 0  # libiscsi refuses a target whose proof does not match
    finally:
        proc.stop()


def test_initiator_acl_hides_and_refuses_target(tmp_path: Path) -> None:
    require("iscsi-ls", "iscsi-inq")
    cfg = small_config(initiators=["iqn.2026-11.test:allowed"])
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        hidden = run("iscsi-ls", "-i", "iqn.2026-11.test:other", f"iscsi://127.0.0.1:{proc.port}").stdout
        assert TARGET not in hidden
        shown = run("iscsi-ls", "-i", "iqn.2026-11.test:allowed", f"iscsi://127.0.0.1:{proc.port}").stdout
        assert TARGET in shown
        refused = run("iscsi-inq", "-i", "iqn.2026-11.test:other", proc.url(TARGET, 0), check=False)
        assert refused.returncode != 0
        allowed = run("iscsi-inq", "-i", "iqn.2026-11.test:allowed", proc.url(TARGET, 0), check=False)
        assert allowed.returncode == 0, allowed.stderr
    finally:
        proc.stop()


def test_header_digest_with_libiscsi(storaged: StoragedProcess, tmp_path: Path) -> None:
    require("qemu-img")
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(1 << 20))
    spec = "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "iscsi", "transport": "tcp", "portal": f"127.0.0.1:{storaged.port}", "target": TARGET, "lun": 1,
        "header-digest": "crc32c"}}, separators=(",", ":"))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), spec)
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", spec, str(out))
    assert out.read_bytes()[: 1 << 20] == src.read_bytes()
    assert storaged.wait_log("digests header=CRC32C"), storaged.log


def test_filesystem_on_a_lun_through_a_real_block_device(storaged: StoragedProcess, tmp_path: Path) -> None:
    """mkfs, mount, write, unmount and fsck on /dev/loopN whose I/O goes over iSCSI to storaged."""
    from .blockdev import iscsi_block_device, require_block_devices

    require_block_devices()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    payload = os.urandom(3 << 20)
    with iscsi_block_device(storaged.url(TARGET, 0), tmp_path, "first") as dev:
        run("mkfs.ext4", "-q", "-F", dev, timeout=120)
        run("mount", dev, str(mnt))
        try:
            (mnt / "file.bin").write_bytes(payload)
        finally:
            run("umount", str(mnt))
    # a fresh export and loop device: nothing can come from a cache on the host side
    with iscsi_block_device(storaged.url(TARGET, 0), tmp_path, "second") as dev:
        check = run("fsck.ext4", "-fn", dev, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        run("mount", dev, str(mnt))
        try:
            assert (mnt / "file.bin").read_bytes() == payload
        finally:
            run("umount", str(mnt))


def test_the_block_device_reads_what_the_lun_holds_not_a_host_cache(storaged: StoragedProcess,
                                                                    tmp_path: Path) -> None:
    """What the loop device reads comes from the LUN: a block rewritten over another session is read
    back new (with buffered loop I/O the FUSE file's page cache answered with the old one)."""
    import mmap

    from .blockdev import iscsi_block_device, require_block_devices

    require_block_devices()
    with iscsi_block_device(storaged.url(TARGET, 1), tmp_path, "coherent", direct_io=True) as dev:
        fd = os.open(dev, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
        try:
            buf = mmap.mmap(-1, 4096)
            buf.write(b"A" * 4096)
            os.pwritev(fd, [buf], 0)
            first = mmap.mmap(-1, 4096)
            os.preadv(fd, [first], 0)
            assert first[:4] == b"AAAA"

            async def rewrite() -> int:
                s = IscsiSession()
                await s.login("127.0.0.1", storaged.port, TARGET)
                try:
                    cdb = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 4096 // 512, 0)  # WRITE(10) of LBA 0..7
                    return (await s.scsi(1, cdb, data_out=b"B" * 4096)).status
                finally:
                    await s.logout()

            assert asyncio.run(rewrite()) == 0
            again = mmap.mmap(-1, 4096)
            os.preadv(fd, [again], 0)
            assert again[:4] == b"BBBB", "the block device answered from a host-side cache"
        finally:
            os.close(fd)


def test_iscsi_ls_on_a_wildcard_listener_lists_a_reachable_portal(tmp_path: Path) -> None:
    require("iscsi-ls")
    proc = StoragedProcess(tmp_path / "data", small_config(), extra_args=["--listen", "0.0.0.0:0"]).start()
    try:
        out = run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{proc.port}").stdout
        assert f"Target:{TARGET} Portal:127.0.0.1:{proc.port},1" in out, out
        assert "0.0.0.0" not in out
    finally:
        proc.stop()

"""Two arrays on loopback: virtual volumes, command devices through the peer, link faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiSession

from .conftest import require
from .daemon import REPO, wait_for
from .sites import Sites, iqn, start_sites

pytestmark = pytest.mark.integration


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    s = start_sites(tmp_path)
    try:
        assert s.linked(), s.a.log[-3000:] + s.b.log[-3000:]
        yield s
    finally:
        s.stop()


def hostctl(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hostctl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def test_qemu_img_into_virtual_volume_lands_on_peer_lun(sites: Sites, tmp_path: Path) -> None:
    require("qemu-img")
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(5 << 20))
        f.seek(12 << 20)
        f.write(os.urandom(3 << 20))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), sites.a.url(iqn("site-a"), 4)],
                   check=True, timeout=120)
    out = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", sites.b.url(iqn("site-b"), 1), str(out)],
                   check=True, timeout=120)
    data = out.read_bytes()
    assert len(data) == 32 << 20
    assert hashlib.sha256(data[: 15 << 20]).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()


def test_virtual_volume_has_its_own_identity(sites: Sites) -> None:
    require("iscsi-inq")

    def vpd83(url: str) -> str:
        return subprocess.run(["iscsi-inq", "-e", "1", "-c", "131", url], capture_output=True, text=True,
                              errors="replace", check=True).stdout

    assert vpd83(sites.a.url(iqn("site-a"), 4)) != vpd83(sites.b.url(iqn("site-b"), 1))


def test_hostctl_on_site_a_alone_drives_site_b(sites: Sites) -> None:
    cfg = sites.host_config()
    local = hostctl(cfg, "--json", "info")
    assert local.returncode == 0, local.stderr
    info_a = json.loads(local.stdout)
    assert info_a["array"] == "site-a"
    assert {"array": "site-b", "target": iqn("site-a"), "lun": 3} in info_a["command_devices"]
    remote = hostctl(cfg, "--json", "--array", "site-b", "info")
    assert remote.returncode == 0, remote.stderr
    info_b = json.loads(remote.stdout)
    assert info_b["array"] == "site-b"
    assert [lun["type"] for lun in info_b["luns"]] == ["data", "data", "command_device", "virtual", "virtual"]
    human = hostctl(cfg, "--array", "site-b", "luns")
    assert human.returncode == 0 and "command_device" in human.stdout


def test_link_cut_gives_not_ready_in_bounded_time_and_recovers(sites: Sites) -> None:
    async def scenario() -> None:
        s = IscsiSession()
        await s.login("127.0.0.1", sites.a.port, iqn("site-a"))
        ok = await s.scsi(4, read10(0, 8), read_length=4096)
        assert ok.status == 0
        sites.b.stop()
        # the answer must come within io_timeout (3 s) plus slack, or the call itself times out: never a hang
        r = await s.scsi(4, read10(0, 8), read_length=4096, timeout=3.0 + 5.0)
        assert r.status == 2 and r.sense_key == 0x02 and r.asc_ascq == (0x08, 0x00), r  # NOT READY, LU COMM FAILURE
        tur = await s.scsi(4, bytes(6), timeout=30)
        assert tur.status == 2 and tur.sense_key == 0x02 and tur.asc_ascq == (0x08, 0x00), tur  # TUR knows too
        sites.b.start()
        deadline = time.monotonic() + 30
        while True:
            r = await s.scsi(4, read10(0, 8), read_length=4096, timeout=30)
            if r.status == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert r.status == 0, "I/O did not resume after the peer came back"
        await s.logout()

    asyncio.run(scenario())


def test_disallowed_initiator_gets_not_allowed(tmp_path: Path) -> None:
    s = start_sites(tmp_path, b_extra={"cmd_allowed": ["site-a/iqn.2026-11.test:good"]})
    try:
        assert s.linked()
        good = hostctl(s.host_config("iqn.2026-11.test:good"), "--array", "site-b", "info")
        assert good.returncode == 0, good.stderr
        bad = hostctl(s.host_config("iqn.2026-11.test:bad"), "--array", "site-b", "info")
        assert bad.returncode == 1
        assert "NOT_ALLOWED" in bad.stderr and "iqn.2026-11.test:bad" in bad.stderr
    finally:
        s.stop()


def test_link_authentication_failure_is_refused_and_logged(tmp_path: Path) -> None:
    s = start_sites(tmp_path, a_extra={"secret": "a-different-secret-9876543210"})
    try:
        assert wait_for(lambda: "AUTH" in s.b.log or "auth" in s.b.log.lower(), 20)
        assert not s.linked(timeout=3)
        r = hostctl(s.host_config(), "--array", "site-b", "info", timeout=60)
        assert r.returncode in (1, 3), r.stderr
    finally:
        s.stop()


def test_hostctl_over_a_block_device(sites: Sites, tmp_path: Path) -> None:
    from .blockdev import iscsi_block_device, require_block_devices

    require_block_devices()
    import yaml

    # direct I/O: a command device's answers must come from the array, never from a host cache
    with iscsi_block_device(sites.a.url(iqn("site-a"), 2), tmp_path, "cmd-a", direct_io=True) as local, \
            iscsi_block_device(sites.a.url(iqn("site-a"), 3), tmp_path, "cmd-b", direct_io=True) as via_a:
        cfg = tmp_path / "host-blk.yaml"
        cfg.write_text(yaml.safe_dump({
            "initiator": "iqn.2026-11.test:blk", "arrays": ["site-a", "site-b"],
            "local": {"array": "site-a", "command_device": local, "devices": {3: via_a}}, "timeout": 20}))
        r = hostctl(cfg, "--json", "info")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["array"] == "site-a"
        r = hostctl(cfg, "--json", "--array", "site-b", "info")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["array"] == "site-b"


def test_resent_tag_is_not_executed_twice_through_the_peer(sites: Sites) -> None:
    """A command re-sent with the same tag (a host retrying after a lost answer) is not run again."""
    from storaged.cmddev.block import (
        Command,
        ResultStatus,
        SlotState,
        decode_directory,
        decode_response,
        encode_release,
    )

    def write16(lba: int, blocks: int) -> bytes:
        return bytes([0x8A, 0x08]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"

    def read16(lba: int, blocks: int) -> bytes:
        return bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"

    async def scenario() -> None:
        s = IscsiSession()
        await s.login("127.0.0.1", sites.a.port, iqn("site-a"), initiator="iqn.2026-11.test:retry")
        lun = 3  # site-b's command device, through site-a
        d = decode_directory((await s.scsi(lun, read16(0, 8), read_length=4096)).data)
        slot = 1 + d.states.index(SlotState.FREE)
        lba = slot * d.slot_size // 512
        block = Command(1, 0xC0FFEE, {"hello": "world"}).encode()
        block += bytes(-len(block) % 512)
        n = len(block) // 512

        async def send_and_read() -> object:
            assert (await s.scsi(lun, write16(lba, n), data_out=block)).status == 0
            for _ in range(200):
                r = decode_response((await s.scsi(lun, read16(lba, 8), read_length=4096)).data)
                if r.state == SlotState.DONE:
                    return r
                await asyncio.sleep(0.01)
            raise AssertionError("no result")

        first = await send_and_read()
        assert first.status == ResultStatus.OK and first.data == {"echo": {"hello": "world"}}
        again = await send_and_read()  # result still held: the same answer, not a second run
        assert again.tag == 0xC0FFEE and again.status == ResultStatus.OK
        rel = encode_release(0xC0FFEE)
        assert (await s.scsi(lun, write16(lba, 1), data_out=rel + bytes(512 - len(rel)))).status == 0
        late = await send_and_read()  # released, then re-sent: refused as a duplicate
        assert late.status == ResultStatus.DUPLICATE, late
        await s.logout()

    asyncio.run(scenario())

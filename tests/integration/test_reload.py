"""Config reload on SIGHUP against a real storaged, seen through real initiators: a session kept open
across the reload (the project's initiator), libiscsi's iscsi-ls and iscsi-readcapacity16 as fresh
hosts. What applies, what is refused (nothing applied), and a bad file (nothing changed)."""

from __future__ import annotations

import copy
import fcntl
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from storaged.iscsi.chap import ChapCredentials
from storaged.iscsi.initiator import IscsiSession, LoginRefused
from storaged.iscsi.tasks import TMF, TMFResponse

from .conftest import TARGET, require, small_config
from .daemon import StoragedProcess, wait_for
from .sites import SECRET, free_port, iqn, start_sites
from .test_replication import create_pair

pytestmark = pytest.mark.integration

TUR = bytes(6)
REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0]) + (4096).to_bytes(4, "big") + bytes(2)
READ_CAPACITY16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
REPORTED_LUNS_CHANGED = (0x3F, 0x0E)
CAPACITY_CHANGED = (0x2A, 0x09)


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


def read16(lba: int, blocks: int) -> bytes:
    return bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


def reload(proc: StoragedProcess, config: dict[str, Any] | str) -> str:
    """Write the config file, SIGHUP, and return the log lines of that reload once it is over."""
    assert proc.config_path is not None and proc.proc is not None
    proc.config_path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    start = len(proc.log_lines)
    proc.proc.send_signal(signal.SIGHUP)

    def done() -> bool:
        new = "".join(proc.log_lines[start:])
        return any(s in new for s in ("reload: " + str(proc.config_path), "reload refused (", "nothing to re-read"))

    assert wait_for(done, 30), proc.log
    return "".join(proc.log_lines[start:])


async def unit_attentions(s: IscsiSession, lun: int) -> list[tuple[int, int]]:
    """TEST UNIT READY until GOOD; the ASC/ASCQ of each unit attention on the way."""
    seen = []
    for _ in range(8):
        r = await s.scsi(lun, TUR, retry_unit_attention=False)
        if r.status == 0:
            return seen
        assert r.status == 2 and r.sense_key == 6, (r.status, r.sense)
        seen.append(r.asc_ascq)
    raise AssertionError(f"LUN {lun} never became ready: {seen}")


async def capacity(s: IscsiSession, lun: int) -> int:
    r = await s.scsi(lun, READ_CAPACITY16, read_length=32)
    assert r.status == 0, r.sense
    return (int.from_bytes(r.data[0:8], "big") + 1) * int.from_bytes(r.data[8:12], "big")


async def report_luns(s: IscsiSession) -> list[int]:
    r = await s.scsi(0, REPORT_LUNS, read_length=4096)
    assert r.status == 0
    n = int.from_bytes(r.data[0:4], "big") // 8
    return [r.data[8 + 8 * i + 1] for i in range(n)]


def iscsi_ls(proc: StoragedProcess) -> str:
    out = subprocess.run(["iscsi-ls", "-s", f"iscsi://127.0.0.1:{proc.port}"], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout


def readcapacity16(proc: StoragedProcess, lun: int) -> int:
    out = subprocess.run(["iscsi-readcapacity16", proc.url(TARGET, lun)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Total size"].strip())


async def test_sighup_adds_and_grows_luns_while_a_session_stays_open(tmp_path: Path) -> None:
    require("iscsi-ls", "iscsi-readcapacity16")
    cfg = small_config()
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    s = IscsiSession()
    try:
        await s.login("127.0.0.1", proc.port, TARGET)
        for lun in (0, 1):
            await unit_attentions(s, lun)  # POWER ON, RESET from the login
        old = b"kept across the reload".ljust(4096, b".")
        assert (await s.scsi(1, write16(0, 8), data_out=old)).status == 0
        assert "Lun:2" not in iscsi_ls(proc)

        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"][1]["size"] = "32MiB"
        new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB", "file": "lun2.img"})
        log = reload(proc, new)
        assert f"applied: LUN 2 of {TARGET} added (data, 8 MiB, lun2.img); LUN 1 of {TARGET} grown 16 MiB -> " \
               "32 MiB" in log, log
        assert (tmp_path / "data" / "lun1.img").stat().st_size == 32 << 20
        assert (tmp_path / "data" / "lun2.img").stat().st_size == 8 << 20

        # the open session is told, then sees the new state
        assert await unit_attentions(s, 0) == [REPORTED_LUNS_CHANGED]
        assert sorted(await unit_attentions(s, 1)) == sorted([REPORTED_LUNS_CHANGED, CAPACITY_CHANGED])
        assert await report_luns(s) == [0, 1, 2]
        assert await capacity(s, 1) == 32 << 20
        # ... and still works: old data there, the grown end and the new LUN usable
        got = await s.scsi(1, read16(0, 8), read_length=4096)
        assert got.status == 0 and got.data == old
        tail = bytes(range(256)) * 16
        end = (32 << 20) // 512 - 8
        assert (await s.scsi(1, write16(end, 8), data_out=tail)).status == 0
        assert (await s.scsi(1, read16(end, 8), read_length=4096)).data == tail
        await unit_attentions(s, 2)
        assert (await s.scsi(2, write16(0, 8), data_out=tail)).status == 0
        assert (await s.scsi(2, read16(0, 8), read_length=4096)).data == tail
        # task management on the new LUN through the session that logged in before it existed
        assert await s.task_management(TMF.LOGICAL_UNIT_RESET, 2) == TMFResponse.COMPLETE

        # fresh hosts see it too
        listing = iscsi_ls(proc)
        assert "Lun:2" in listing and "Lun:1" in listing, listing
        assert readcapacity16(proc, 1) == 32 << 20
        assert readcapacity16(proc, 2) == 8 << 20
    finally:
        await s.close()
        proc.stop()


async def test_refused_reload_applies_nothing(tmp_path: Path) -> None:
    require("iscsi-ls", "iscsi-readcapacity16")
    cfg = small_config()
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    s = IscsiSession()
    try:
        await s.login("127.0.0.1", proc.port, TARGET)
        for lun in (0, 1):
            await unit_attentions(s, lun)
        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"][0]["size"] = "32MiB"  # shrink
        del new["targets"][0]["luns"][1]  # remove while a session is logged in
        new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB", "file": "lun2.img"})  # fine on its own
        log = reload(proc, new)
        assert f"targets[0].luns[0].size: LUN 0 of {TARGET}: cannot shrink from 64 MiB to 32 MiB" in log, log
        assert f"LUN 1 of {TARGET}: cannot remove: in use: 1 session(s) logged in to {TARGET}" in log, log
        assert "reload refused (2 problem(s)): nothing applied" in log
        assert "applied:" not in log
        # nothing happened: no unit attention, sizes and LUNs as before, no new file
        assert await unit_attentions(s, 0) == [] and await unit_attentions(s, 1) == []
        assert await report_luns(s) == [0, 1]
        assert await capacity(s, 0) == 64 << 20
        assert not (tmp_path / "data" / "lun2.img").exists()
        assert (tmp_path / "data" / "lun0.img").stat().st_size == 64 << 20
        assert "Lun:2" not in iscsi_ls(proc)
        assert readcapacity16(proc, 0) == 64 << 20

        # without the shrink, and once the session is gone, the removal applies
        await s.logout()
        new["targets"][0]["luns"][0]["size"] = "64MiB"
        log = reload(proc, new)
        assert f"applied: LUN 2 of {TARGET} added (data, 8 MiB, lun2.img); LUN 1 of {TARGET} removed" in log, log
        listing = iscsi_ls(proc)
        assert "Lun:1 " not in listing and "Lun:2" in listing, listing
    finally:
        await s.close()
        proc.stop()


async def test_bad_file_changes_nothing(tmp_path: Path) -> None:
    cfg = small_config()
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    s = IscsiSession()
    try:
        await s.login("127.0.0.1", proc.port, TARGET)
        await unit_attentions(s, 1)
        grown = copy.deepcopy(cfg)
        grown["targets"][0]["luns"][1]["size"] = "32MiB"
        text = yaml.safe_dump(grown)
        log = reload(proc, text + "targets: [\n")
        assert f"reload: {proc.config_path}: not valid YAML: line" in log and "nothing changed" in log, log
        log = reload(proc, text.replace("size: 32MiB", "size: 32 parsecs"))
        assert f"reload: {proc.config_path}: targets[0].luns[1].size: expected a size" in log, log
        assert "nothing changed" in log and "Traceback" not in proc.log
        assert await unit_attentions(s, 1) == [] and await capacity(s, 1) == 16 << 20
        assert (tmp_path / "data" / "lun1.img").stat().st_size == 16 << 20
        log = reload(proc, text)  # fixed: applies
        assert "grown 16 MiB -> 32 MiB" in log
        assert await unit_attentions(s, 1) == [CAPACITY_CHANGED] and await capacity(s, 1) == 32 << 20
        assert proc.alive()
    finally:
        await s.close()
        proc.stop()


async def test_a_failure_while_applying_undoes_what_was_prepared(tmp_path: Path) -> None:
    """The new LUN's file is locked by another process: found only when opening it, after LUN 1's
    file was already grown. The grow is undone and hosts see nothing."""
    cfg = small_config()
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    s = IscsiSession()
    locked = tmp_path / "data" / "lun2.img"
    fd = os.open(locked, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 << 20)
        fcntl.flock(fd, fcntl.LOCK_EX)
        await s.login("127.0.0.1", proc.port, TARGET)
        for lun in (0, 1):
            await unit_attentions(s, lun)
        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"][1]["size"] = "32MiB"
        new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB", "file": "lun2.img"})
        log = reload(proc, new)
        assert "could not apply" in log and "in use by another process" in log and "nothing changed" in log, log
        assert (tmp_path / "data" / "lun1.img").stat().st_size == 16 << 20  # grown, then cut back
        assert locked.exists()  # not ours to delete
        assert await unit_attentions(s, 0) == [] and await unit_attentions(s, 1) == []
        assert await report_luns(s) == [0, 1] and await capacity(s, 1) == 16 << 20
        os.close(fd)
        fd = -1
        assert "applied: LUN 2 of" in reload(proc, new)  # the same file once the other process let go
        assert await capacity(s, 1) == 32 << 20
    finally:
        if fd >= 0:
            os.close(fd)
        await s.close()
        proc.stop()


async def test_acl_and_chap_changes_apply_to_new_logins_only(tmp_path: Path) -> None:
    cfg = small_config()
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    kept = IscsiSession()
    try:
        await kept.login("127.0.0.1", proc.port, TARGET, initiator="iqn.2026-11.test:kept")
        await unit_attentions(kept, 0)
        new = copy.deepcopy(cfg)
        new["targets"][0]["initiators"] = ["iqn.2026-11.test:allowed"]
        log = reload(proc, new)
        assert f"target {TARGET}: initiators (new logins)" in log, log
        assert f"iqn.2026-11.test:kept stays logged in to {TARGET} although the new initiators list" in log
        with pytest.raises(LoginRefused) as info:
            await IscsiSession().login("127.0.0.1", proc.port, TARGET, initiator="iqn.2026-11.test:kept2")
        assert info.value.status == 0x0202
        ok = IscsiSession()
        await ok.login("127.0.0.1", proc.port, TARGET, initiator="iqn.2026-11.test:allowed")
        await ok.logout()
        assert (await kept.scsi(0, TUR)).status == 0  # an existing session is not cut off

        creds = ChapCredentials("host1", "host1-secret-123")
        new["targets"][0]["chap"] = {"username": creds.username, "secret": creds.secret}
        assert "chap (new logins)" in reload(proc, new)
        with pytest.raises(LoginRefused):
            await IscsiSession().login("127.0.0.1", proc.port, TARGET, initiator="iqn.2026-11.test:allowed")
        ok = IscsiSession()
        await ok.login("127.0.0.1", proc.port, TARGET, initiator="iqn.2026-11.test:allowed", chap=creds)
        await ok.logout()
        assert (await kept.scsi(0, TUR)).status == 0
    finally:
        await kept.close()
        proc.stop()


def test_needs_restart_settings_are_logged_and_left_alone(tmp_path: Path) -> None:
    cfg = small_config()
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        new = copy.deepcopy(cfg)
        new["array"]["name"] = "renamed"
        new["iscsi"] = {"queue_depth": 32}
        log = reload(proc, new)
        assert "needs restart, not applied: array.name: 'test-array' -> 'renamed'" in log, log
        assert "needs restart, not applied: iscsi.queue_depth: 128 -> 32" in log
        assert "nothing to apply until a restart" in log
    finally:
        proc.stop()


def test_paired_lun_cannot_be_removed_or_grown_nor_its_peer_removed(tmp_path: Path) -> None:
    import asyncio

    sites = start_sites(tmp_path)
    try:
        assert sites.linked(), sites.a.log + sites.b.log
        asyncio.run(create_pair(sites))
        assert sites.a.config_path is not None
        cfg = yaml.safe_load(sites.a.config_path.read_text())
        new = copy.deepcopy(cfg)
        luns = new["targets"][0]["luns"]
        luns[1]["size"] = "64MiB"  # the P-JNL
        del luns[0]  # the P-VOL
        log = reload(sites.a, new)
        assert "LUN 0 of iqn.2026-11.io.storaged:site-a: cannot remove: paired (journal group g1)" in log, log
        assert "targets[0].luns[0].size: LUN 1 of iqn.2026-11.io.storaged:site-a: cannot grow: paired " \
               "(journal group g1)" in log, log
        assert "nothing applied" in log
        unmapped = copy.deepcopy(cfg)  # site-b's LUN map serves site-a's LUN 2 as its virtual volume LUN 3
        unmapped["targets"][0]["luns"] = [lun for lun in unmapped["targets"][0]["luns"] if lun["lun"] != 2]
        log = reload(sites.a, unmapped)
        assert "LUN 2 of iqn.2026-11.io.storaged:site-a: cannot remove: used over the remote link by site-b" in log, log
        unpeered = copy.deepcopy(cfg)
        unpeered["remote"]["peers"] = []
        unpeered["targets"][0]["luns"] = [lun for lun in unpeered["targets"][0]["luns"] if "map" not in lun]
        log = reload(sites.a, unpeered)
        assert "cannot remove peer site-b: journal group(s) g1 are paired with it" in log, log
        assert wait_for(lambda: "remote link to site-b is up" in sites.a.log)
        assert (tmp_path / "a" / "data1.img").stat().st_size == 32 << 20
    finally:
        sites.stop()


def test_peers_added_removed_and_secret_changes(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    a_cfg = {**small_config(), "array": {"name": "site-a"},
             "remote": {"listen": f"127.0.0.1:{pa}", "keepalive": 0.5, "peers": []}}
    b_cfg = {**small_config(), "array": {"name": "site-b"},
             "remote": {"listen": f"127.0.0.1:{pb}", "keepalive": 0.5,
                        "peers": [{"name": "site-a", "address": f"127.0.0.1:{pa}", "secret": SECRET}]}}
    b_cfg["targets"] = [dict(b_cfg["targets"][0], name=iqn("site-b"))]
    a = StoragedProcess(tmp_path / "a", a_cfg).start()
    b = StoragedProcess(tmp_path / "b", b_cfg).start()
    try:
        peer = {"name": "site-b", "address": f"127.0.0.1:{pb}", "secret": SECRET}
        added = copy.deepcopy(a_cfg)
        added["remote"]["peers"] = [peer]
        assert "peer site-b added" in reload(a, added)
        assert wait_for(lambda: "remote link to site-b is up" in a.log and "remote link to site-a is up" in b.log, 30)

        changed = copy.deepcopy(added)
        changed["remote"]["peers"][0]["secret"] = SECRET + "-new"
        assert "peer site-b: secret (next connection)" in reload(a, changed)
        failures = a.log.count("authentication failed")
        b.stop()  # b comes back with the old secret: the next handshake uses the new one and fails
        b.start()
        assert wait_for(lambda: a.log.count("authentication failed") > failures, 30), a.log
        assert "remote link to site-a is up" not in b.log
        b_new = copy.deepcopy(b_cfg)
        b_new["remote"]["peers"][0]["secret"] = SECRET + "-new"
        assert "peer site-a: secret (next connection)" in reload(b, b_new)
        assert wait_for(lambda: "remote link to site-a is up" in b.log, 30), b.log

        log = reload(a, a_cfg)
        assert "peer site-b removed" in log
        assert wait_for(lambda: b.log.count("remote link to site-a is down") >= 1, 30), b.log
    finally:
        a.stop()
        b.stop()

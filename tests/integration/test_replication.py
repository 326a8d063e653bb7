"""Remote copy between two real arrays: pair formation with initial copy, journal replication,
crash restarts of either array, split and differential resync, delete."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import pytest

from hostctl.client import CommandDeviceClient
from hostctl.device import IscsiDevice
from storaged.iscsi.initiator import IscsiSession

from .daemon import wait_for
from .sites import Sites, iqn, start_sites

pytestmark = pytest.mark.integration

PVOL, SVOL, PJNL, SJNL = 0, 0, 1, 1
SIZE = 64 << 20


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


def read16(lba: int, blocks: int) -> bytes:
    return bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


async def session(port: int, site: str) -> IscsiSession:
    s = IscsiSession()
    await s.login("127.0.0.1", port, iqn(site), initiator=f"iqn.2026-11.test:writer-{site}")
    return s


async def volume_digest(port: int, site: str, lun: int) -> str:
    s = await session(port, site)
    h = hashlib.sha256()
    for off in range(0, SIZE, 4 << 20):
        r = await s.scsi(lun, read16(off // 512, (4 << 20) // 512), read_length=4 << 20)
        assert r.status == 0
        h.update(r.data)
    await s.logout()
    return h.hexdigest()


async def random_writes(port: int, n: int, rng: random.Random) -> None:
    s = await session(port, "site-a")
    for _ in range(n):
        blocks = rng.choice([1, 8, 64, 256])
        lba = rng.randrange(0, SIZE // 512 - blocks)
        r = await s.scsi(PVOL, write16(lba, blocks), data_out=os.urandom(blocks * 512))
        assert r.status == 0, r
    await s.logout()


async def command(port: int, site: str, process: int, params: dict, check: bool = True):  # type: ignore[no-untyped-def]
    dev = await IscsiDevice.open(f"iscsi://127.0.0.1:{port}/{iqn(site)}/2", initiator="iqn.2026-11.test:admin")
    try:
        return await CommandDeviceClient(dev, initiator="iqn.2026-11.test:admin").run(process, params, timeout=60,
                                                                                          check=check)
    finally:
        await dev.close()


async def create_pair(sites: Sites, jnl: int = PJNL):  # type: ignore[no-untyped-def]
    """PAIR_CREATE g1 on the secondary: site-a LUN 0 -> site-b LUN 0, journals on LUN ``jnl`` of each."""
    return await command(sites.b.port, "site-b", 16, {"group": "g1", "peer": "site-a", "pvol": PVOL, "svol": SVOL,
                                                      "pjnl": jnl, "sjnl": jnl})


async def wait_state(sites: Sites, state: str, timeout: float = 60) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await command(sites.b.port, "site-b", 17, {"group": "g1"})
        g = r.data["groups"][0]
        if g["state"] == state:
            return g
        assert asyncio.get_running_loop().time() < deadline, f"group stuck in {g['state']}: {g}"
        await asyncio.sleep(0.3)


async def drained_and_equal(sites: Sites) -> None:
    r = await command(sites.b.port, "site-b", 25, {"group": "g1", "timeout": 60})
    assert r.data["result"] == "DONE", r.data
    assert await volume_digest(sites.a.port, "site-a", PVOL) == await volume_digest(sites.b.port, "site-b", SVOL)


def test_pair_lifecycle_with_crashes(tmp_path: Path) -> None:
    sites = start_sites(tmp_path)
    rng = random.Random(7)

    async def scenario() -> None:
        assert sites.linked()
        await random_writes(sites.a.port, 40, rng)  # data before the pair exists: the initial copy
        r = await create_pair(sites)
        assert r.data["state"] == "COPY"
        await random_writes(sites.a.port, 40, rng)  # host writes during the copy are journaled
        await wait_state(sites, "PAIR")
        await drained_and_equal(sites)
        # S-VOL is read-only to hosts while paired
        sb = await session(sites.b.port, "site-b")
        w = await sb.scsi(SVOL, write16(0, 1), data_out=bytes(512))
        assert w.status == 2 and w.sense_key == 0x07  # DATA PROTECT
        await sb.logout()
        # the secondary is killed and comes back: replication resumes
        sites.b.kill()
        await random_writes(sites.a.port, 30, rng)
        sites.b.start()
        assert sites.linked()
        await random_writes(sites.a.port, 10, rng)
        await drained_and_equal(sites)
        # the primary is killed (acknowledged writes in its journal) and comes back
        await random_writes(sites.a.port, 30, rng)
        sites.a.kill()
        sites.a.start()
        assert sites.linked()
        await random_writes(sites.a.port, 10, rng)
        await drained_and_equal(sites)
        # split, write on the primary, resync copies only what changed
        r = await command(sites.b.port, "site-b", 18, {"group": "g1"})
        assert r.data["state"] == "PSUS"
        bad = await command(sites.b.port, "site-b", 18, {"group": "g1"}, check=False)
        assert bad.status.name == "WRONG_STATE" and "PSUS" in bad.error
        await random_writes(sites.a.port, 20, rng)
        r = await command(sites.b.port, "site-b", 19, {"group": "g1"})
        assert r.data["state"] == "COPY" and 0 < sum(r.data["regions"].values()) <= 20
        await wait_state(sites, "PAIR")
        await random_writes(sites.a.port, 10, rng)
        await drained_and_equal(sites)
        shown = await wait_state(sites, "PAIR")
        assert shown["lag_seconds"] == 0.0 and shown["behind"]["entries"] == 0
        r = await command(sites.b.port, "site-b", 20, {"group": "g1"})
        assert r.data["state"] == "SMPL"

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()


def qemu_write(port: int, site: str, lun: int, image: Path) -> None:
    import subprocess

    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
                    f"iscsi://127.0.0.1:{port}/{iqn(site)}/{lun}"], check=True, timeout=120)


async def wait_group(port: int, site: str, state: str, role: str, timeout: float = 60) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await command(port, site, 17, {"group": "g1"})
        g = r.data["groups"][0]
        if g["state"] == state and g["role"] == role:
            return g
        assert asyncio.get_running_loop().time() < deadline, f"{site}: group is {g['role']} {g['state']}: {g}"
        await asyncio.sleep(0.3)


def test_dr_drill_takeover_reverse_resync_and_swap_back(tmp_path: Path) -> None:
    """Write on A, replicate, lose A (with writes it journaled but never shipped), take over on B,
    write on B, bring A back (it is fenced), reverse resync (refused until forced, since it discards
    A's unshipped writes), swap back: the volumes compare equal at every step where they should."""
    from storaged.faultproxy import FaultProxy

    from .conftest import require
    from .sites import free_port

    require("qemu-img")
    link_a, link_b, proxy_port = free_port(), free_port(), free_port()
    sites = start_sites(tmp_path, ports=(link_a, link_b), b_extra={"peer_address": f"127.0.0.1:{proxy_port}"})
    rng = random.Random(11)
    image = tmp_path / "image.raw"

    def new_image() -> Path:
        with open(image, "wb") as f:
            f.write(os.urandom(2 << 20))
            f.seek(rng.randrange(4, 20) << 20)
            f.write(os.urandom(1 << 20))
        return image

    async def scenario() -> None:
        proxy = FaultProxy(("127.0.0.1", proxy_port), ("127.0.0.1", link_a))
        await proxy.start()
        try:
            assert await asyncio.to_thread(sites.linked)
            qemu_write(sites.a.port, "site-a", PVOL, new_image())
            await create_pair(sites)
            await wait_state(sites, "PAIR")
            await random_writes(sites.a.port, 20, rng)
            await drained_and_equal(sites)
            # the link to A hangs; A keeps acknowledging writes that never reach B; then A is lost
            proxy.faults.set(stall=True)
            await random_writes(sites.a.port, 3, rng)
            sites.a.kill()
            plan = await command(sites.b.port, "site-b", 26, {"group": "g1", "dry_run": True})
            assert plan.data["variant"] == "svol-takeover" and plan.data["primary_reachable"] is False
            r = await command(sites.b.port, "site-b", 26, {"group": "g1"})
            assert r.data["state"] == "SSWS"
            qemu_write(sites.b.port, "site-b", SVOL, new_image())  # production runs on B now
            # A comes back: B fences it, so its hosts cannot diverge further
            proxy.faults.set(stall=False)
            proxy.cut()
            await asyncio.to_thread(sites.a.start)
            assert await asyncio.to_thread(lambda: wait_for(lambda: "fenced after the takeover" in sites.b.log, 30))
            sa = await session(sites.a.port, "site-a")
            w = await sa.scsi(PVOL, write16(0, 1), data_out=bytes(512))
            assert w.status == 2 and w.sense_key == 0x07, w  # DATA PROTECT on the fenced old primary
            await sa.logout()
            refused = await command(sites.b.port, "site-b", 19, {"group": "g1", "swap": True}, check=False)
            assert refused.status.name == "WRONG_STATE" and "would discard 3 writes" in refused.error, refused.error
            r = await command(sites.b.port, "site-b", 19, {"group": "g1", "swap": True, "force": True})
            assert r.data["role"] == "primary"
            await wait_group(sites.a.port, "site-a", "PAIR", "secondary")
            await random_writes_to(sites.b.port, "site-b", 15, rng)
            r = await command(sites.a.port, "site-a", 25, {"group": "g1", "timeout": 60})
            assert r.data["result"] == "DONE", r.data
            assert (await volume_digest(sites.b.port, "site-b", SVOL)
                    == await volume_digest(sites.a.port, "site-a", PVOL))
            # swap back while both sites are up: A is primary again, B its secondary
            r = await command(sites.a.port, "site-a", 26, {"group": "g1"})
            assert r.data["variant"] == "swap" and r.data["role"] == "primary", r.data
            await wait_group(sites.b.port, "site-b", "PAIR", "secondary")
            qemu_write(sites.a.port, "site-a", PVOL, new_image())
            await drained_and_equal(sites)
        finally:
            await proxy.close()

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()


async def random_writes_to(port: int, site: str, n: int, rng: random.Random) -> None:
    s = await session(port, site)
    for _ in range(n):
        blocks = rng.choice([1, 8, 64])
        lba = rng.randrange(0, SIZE // 512 - blocks)
        r = await s.scsi(0, write16(lba, blocks), data_out=os.urandom(blocks * 512))
        assert r.status == 0, r
    await s.logout()


@pytest.mark.parametrize("policy", ["suspend", "delay"])
def test_journal_full(tmp_path: Path, policy: str) -> None:
    """A journal that fills while the link hangs never corrupts anything: "suspend" turns the pair
    PSUE and a resync copies only the changed regions; "delay" holds host writes until room frees."""
    from storaged.faultproxy import FaultProxy

    from .sites import free_port

    link_a, link_b, proxy_port = free_port(), free_port(), free_port()
    small = [{"lun": 6, "size": "1MiB", "file": "jnl6.img"}]
    rep = {"journal_full": policy, "delay_limit": 10}
    sites = start_sites(tmp_path, ports=(link_a, link_b),
                        a_extra={"extra_luns": small, "replication": rep},
                        b_extra={"extra_luns": small, "peer_address": f"127.0.0.1:{proxy_port}"})
    rng = random.Random(3)

    async def scenario() -> None:
        proxy = FaultProxy(("127.0.0.1", proxy_port), ("127.0.0.1", link_a))
        await proxy.start()
        try:
            assert await asyncio.to_thread(sites.linked)
            await create_pair(sites, jnl=6)
            await wait_state(sites, "PAIR")
            proxy.faults.set(stall=True)
            s = await session(sites.a.port, "site-a")
            if policy == "delay":
                loop = asyncio.get_running_loop()
                loop.call_later(1.5, lambda: proxy.faults.set(stall=False))
            for i in range(12):  # 12 x 128 KiB into a 1 MiB journal
                lba = rng.randrange(0, SIZE // 512 - 256)
                r = await s.scsi(PVOL, write16(lba, 256), data_out=os.urandom(256 * 512), timeout=60)
                assert r.status == 0, r  # host writes never fail because of the journal
            await s.logout()
            a_view = (await command(sites.a.port, "site-a", 17, {"group": "g1"})).data["groups"][0]
            if policy == "suspend":
                assert a_view["state"] == "PSUE" and "full" in a_view["error"], a_view
                proxy.faults.set(stall=False)
                await wait_state(sites, "PSUE")
                r = await command(sites.b.port, "site-b", 19, {"group": "g1"})
                assert 0 < r.data["regions"][str(PVOL)] <= 12 * 2  # only what changed, not all 64 MiB
                await wait_state(sites, "PAIR")
            else:
                assert a_view["state"] == "PAIR", a_view
            await drained_and_equal(sites)
        finally:
            await proxy.close()

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()


def test_split_and_delete_from_the_primary_side(tmp_path: Path) -> None:
    """As with HORCM, pairsplit and pairdelete work on either array: the primary passes them on."""
    sites = start_sites(tmp_path)

    async def scenario() -> None:
        assert await asyncio.to_thread(sites.linked)
        await create_pair(sites)
        await wait_state(sites, "PAIR")
        r = await command(sites.a.port, "site-a", 18, {"group": "g1"})
        assert r.data["state"] == "PSUS" and r.data["via"] == "site-b"
        await wait_state(sites, "PSUS")
        r = await command(sites.a.port, "site-a", 20, {"group": "g1"})
        assert r.data["state"] == "SMPL"
        for port, site in ((sites.a.port, "site-a"), (sites.b.port, "site-b")):
            r = await command(port, site, 17, {})
            assert r.data["groups"] == [], (site, r.data)
        sb = await session(sites.b.port, "site-b")  # the former S-VOL is writable again
        assert (await sb.scsi(SVOL, write16(0, 1), data_out=bytes(512))).status == 0
        await sb.logout()

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()


def test_host_driven_replication_loop(tmp_path: Path) -> None:
    """Fig. 16 from the host: `hostctl replicate --once` (status, acquire, status, restore, purge
    through command devices, the secondary reached through the primary's virtual volume) brings
    the S-VOL up to date while the secondary's own loop is slowed right down."""
    import json
    import subprocess
    import sys

    from .daemon import REPO

    slow = {"replication": {"interval": 60}}
    sites = start_sites(tmp_path, b_extra=slow)
    host = sites.host_config("iqn.2026-11.test:loop")

    def hostctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hostctl", "--config", str(host), *args], capture_output=True,
                              text=True, timeout=120, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))

    async def scenario() -> None:
        assert await asyncio.to_thread(sites.linked)
        r = await asyncio.to_thread(hostctl, "paircreate", "-g", "g1", "--pvol", "site-a:0", "--svol", "site-b:0",
                                    "--pjnl", "1", "--sjnl", "1", "--wait", "--no-progress")
        assert r.returncode == 0, r.stderr
        await random_writes(sites.a.port, 25, random.Random(5))
        shown = (await command(sites.b.port, "site-b", 17, {"group": "g1"})).data["groups"][0]
        assert shown["behind"]["entries"] > 0  # the secondary's own loop waits a minute between rounds
        r = await asyncio.to_thread(hostctl, "--json", "replicate", "-g", "g1", "--primary", "site-a",
                                    "--secondary", "site-b", "--once")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])  # one JSON line per round
        shown = (await command(sites.b.port, "site-b", 17, {"group": "g1"})).data["groups"][0]
        assert shown["behind"]["entries"] == 0 and shown["lag_seconds"] == 0.0, shown
        assert await volume_digest(sites.a.port, "site-a", PVOL) == await volume_digest(sites.b.port, "site-b", SVOL)

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()

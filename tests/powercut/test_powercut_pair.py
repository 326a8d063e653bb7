"""Power cuts of a real pair (issue 7): either array's data directory on a volatile file system.

Two real storaged processes on 127.0.0.1 form a journal group of two pairs (site-a LUNs 5 and 6
-> site-b LUNs 5 and 6, journals on LUN 7). Four qemu-io hosts (two per P-VOL) write tagged
extents over iscsi://, some with FUA, with a flush after every few writes. Mid-workload the array
whose data directory is on ``volatile_fs`` is killed with SIGKILL and its power is cut: every
write no fsync covered is lost (all of them, or, for a reordering cache, a seeded half of the
blocks kept). The power comes back, the array restarts from the same config, and an operator does
what the docs say: waits for the restarted primary's fence to lift, ``pairresync`` if the group is
suspended, ``pairsyncwait``. Then:

* every write acknowledged with FUA or before a completed flush is on the P-VOLs (the primary
  acknowledged it), right after the restart and after the recovery;
* the group says PAIR and pairsyncwait DONE, and P-VOL == S-VOL byte for byte (never PAIR with a
  silent difference); when only the secondary lost power, the P-VOLs hold every acknowledged write;
* at the end both arrays stop cleanly and the LUN files are compared byte for byte.

STORAGED_POWERCUT_CUTS (default 4) cuts per test, STORAGED_POWERCUT_SEED the seed.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storaged.faultproxy import FaultProxy
from storaged.iscsi.initiator import IscsiSession
from tests.integration.conftest import require
from tests.integration.daemon import StoragedProcess, wait_for
from tests.integration.sites import Sites, free_port, iqn, site_config
from tests.integration.test_replication import command, read16
from tests.integration.write_model import check_state, tags

from .mount import CutStats, VolatileMount, require_fuse
from .qemu_writers import Ledger, QemuIoError, QemuIoWriter, durable_losses

pytestmark = pytest.mark.integration

VOLS = {5: "data5.img", 6: "data6.img"}  # P-VOL LUN -> its file (the S-VOL has the same LUN and file)
JNL = 7
VOL_SIZE = 8 << 20
BLOCKS = VOL_SIZE // 512
CUTS = int(os.environ.get("STORAGED_POWERCUT_CUTS", "4"))
SEED = int(os.environ.get("STORAGED_POWERCUT_SEED", "20261203"))
WRITERS_PER_VOL = 2
FLUSH_EVERY = 40


@dataclass
class Run:
    """Two linked arrays, one of them (``cut_site``) on a volatile mount, and what happened."""

    sites: Sites
    mount: VolatileMount
    cut_site: str  # "a" or "b"
    tmp: Path
    link_a: int = 0  # site-a's remote link port
    proxy_port: int = 0  # site-b reaches it through a fault proxy on this port
    proxy: FaultProxy | None = None
    ledger: Ledger = field(default_factory=Ledger)
    stats: Counter[str] = field(default_factory=Counter)
    cuts: list[CutStats] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # what the operator saw after each cut
    exposed: set[int] = field(default_factory=set)  # acknowledged, not durable at the last cut of the primary
    cut_at: list[int] = field(default_factory=list)  # writes issued when each cut came

    @property
    def victim(self) -> StoragedProcess:
        return self.sites.a if self.cut_site == "a" else self.sites.b


@pytest.fixture
def tools() -> None:
    require("qemu-io")
    require_fuse()


def start(tmp: Path, cut_site: str) -> Iterator[Run]:
    """Both arrays up and linked, ``cut_site``'s data directory on a volatile mount; stops all."""
    mount = VolatileMount(tmp / f"{cut_site}-volatile", tmp / f"{cut_site}-disk").start()
    link_a, link_b, proxy_port = free_port(), free_port(), free_port()
    extra = [{"lun": 5, "size": "8MiB", "file": VOLS[5]}, {"lun": 6, "size": "8MiB", "file": VOLS[6]},
             {"lun": JNL, "size": "128MiB", "file": "jnl7.img"}]
    # the config files go beside the data directories, so never on the volatile mount
    dirs = {"a": tmp / "a", "b": tmp / "b", cut_site: mount.mount}
    b = StoragedProcess(dirs["b"], site_config("site-b", "site-a", link_b, link_a, extra_luns=extra,
                                                peer_address=f"127.0.0.1:{proxy_port}"))
    a = StoragedProcess(dirs["a"], site_config("site-a", "site-b", link_a, link_b, extra_luns=extra))
    run = Run(Sites(a, b, tmp), mount, cut_site, tmp, link_a, proxy_port)
    try:
        b.start()
        a.start()
        yield run
    finally:
        run.sites.a.kill()  # a clean stop was the test's job; whatever is left is killed
        run.sites.b.kill()
        for name, proc in (("a", run.sites.a), ("b", run.sites.b)):
            (tmp / f"site-{name}.log").write_text(proc.log)
        mount.kill()
    print(f"\npower cuts of site-{cut_site}: {len(run.cuts)} cuts after writes {run.cut_at}, "
          f"{[(c.blocks, c.kept) for c in run.cuts]} (unsynced 4 KiB blocks, kept); writes issued {len(run.ledger.model.writes)}, acknowledged "
          f"{run.ledger.model.count('acked')} ({run.ledger.fua} FUA), durable {len(run.ledger.durable)}, "
          f"lost in a cut {run.ledger.model.count('lost')}, flushes {run.ledger.flushes}; "
          f"operator saw {run.states}; {dict(run.stats)}")


@pytest.fixture
def primary_cut(tmp_path: Path, tools: None) -> Iterator[Run]:
    yield from start(tmp_path, "a")


@pytest.fixture
def secondary_cut(tmp_path: Path, tools: None) -> Iterator[Run]:
    yield from start(tmp_path, "b")


def test_power_cut_of_the_primary(primary_cut: Run) -> None:
    asyncio.run(with_proxy(primary_cut))


def test_power_cut_of_the_secondary(secondary_cut: Run) -> None:
    asyncio.run(with_proxy(secondary_cut))


async def with_proxy(run: Run) -> None:
    run.proxy = FaultProxy(("127.0.0.1", run.proxy_port), ("127.0.0.1", run.link_a))
    await run.proxy.start()
    try:
        await scenario(run)
    finally:
        await run.proxy.close()


async def scenario(run: Run) -> None:
    """Cycles of workload, cut, restart, operator, check. The primary's cuts alternate the link up
    (the secondary's rounds flush the primary's journal and P-VOLs every 0.2 s) and the link
    stalled (nothing flushes but the hosts' flushes and FUA), and drop-all with a reordering cache."""
    rng = random.Random(SEED + (run.cut_site == "b"))
    sites = run.sites
    assert await asyncio.to_thread(sites.linked), "the arrays never linked"
    for vol in VOLS:
        r = await command(sites.b.port, "site-b", 16, {"group": "g1", "peer": "site-a", "pvol": vol, "svol": vol,
                                                       "pjnl": JNL, "sjnl": JNL})
        assert r.data["state"] == "COPY", r.data
    await operator(run, initial=True)
    for cycle in range(CUTS):
        keep = 0.0 if cycle % 2 == 0 else 0.5  # drop every unsynced block / a reordering cache
        stall = run.cut_site == "a" and cycle % 4 >= 2
        await workload_with_cut(run, rng, keep, rng.randrange(1 << 30), stall)
        if run.cut_site == "a":  # what the cut left on the disk, before any recovery
            disk = {vol: read_file(run.mount.backing / f) for vol, f in VOLS.items()}
            lost = durable_losses(run.ledger, disk)
            assert not lost, f"cut {cycle + 1}: durable writes not on the disk after the cut: {lost[:5]}"
        await asyncio.to_thread(run.mount.start)
        await asyncio.to_thread(run.victim.start)
        if run.cut_site == "a":
            p = {vol: await read_lun(sites.a.port, "site-a", vol) for vol in VOLS}  # fenced, but readable
            lost = durable_losses(run.ledger, p)
            assert not lost, f"cut {cycle + 1}: the restarted primary lost durable writes: {lost[:5]}"
            run.stats["acked_not_durable"] += len(run.exposed)
            run.stats["acked_not_durable_lost"] += len(durable_losses(run.ledger, p, run.exposed))
            assert await asyncio.to_thread(
                lambda: wait_for(lambda: "confirmed this array as the primary" in sites.a.log, 30)), \
                "the restarted primary was never confirmed"
        await operator(run)
        await check_equal(run, f"after cut {cycle + 1}")
    # a last clean workload, then a clean stop of both: the files themselves must be equal
    await workload_with_cut(run, rng, keep=None, seed=0)
    await operator(run)
    await check_equal(run, "at the end")
    assert sites.a.stop() == 0 and sites.b.stop() == 0
    files = {site: {vol: read_file(d / f) for vol, f in VOLS.items()}
             for site, d in (("a", sites.a.data_dir), ("b", sites.b.data_dir))}
    for vol in VOLS:
        assert files["a"][vol] == files["b"][vol], f"LUN {vol}: the files differ after a clean stop"
    assert not durable_losses(run.ledger, files["a"])
    assert sum(c.dropped for c in run.cuts) > 0, "no cut dropped anything: the test cut nothing"


async def workload_with_cut(run: Run, rng: random.Random, keep: float | None, seed: int,
                            stall: bool = False) -> None:
    """Writers on every P-VOL (``stall``: with the replication link stalled); after a random while,
    at a moment the victim's file system holds unsynced blocks (or after 3 s more), the victim is
    killed and its power cut (keep None: no cut, the writers just stop)."""
    sites = run.sites
    writers = [QemuIoWriter(run.ledger, ("127.0.0.1", sites.a.port), iqn("site-a"), vol, BLOCKS, run.tmp,
                            f"w{vol}-{k}", random.Random(rng.randrange(1 << 30)))
               for vol in VOLS for k in range(WRITERS_PER_VOL)]
    stop = asyncio.Event()
    try:
        for w in writers:
            await w.start()
        # one writer of each P-VOL flushes now and then, the other never: between two flushes
        # the acknowledged writes are the array's to lose at a cut
        tasks = [asyncio.ensure_future(w.run(stop, FLUSH_EVERY if k % WRITERS_PER_VOL == 0 else 0))
                 for k, w in enumerate(writers)]
        assert run.proxy is not None
        run.proxy.faults.set(stall=stall)
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        if keep is None:
            stop.set()
            await asyncio.gather(*tasks)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while (await asyncio.to_thread(run.mount.dirty))[1] < 16 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        run.victim.kill()
        run.cuts.append(await asyncio.to_thread(run.mount.cut, keep, seed))
        if run.cut_site == "a":
            run.exposed = run.ledger.power_cut()
        run.cut_at.append(len(run.ledger.model.writes))
        run.proxy.faults.set(stall=False)
        run.proxy.cut()  # the stalled connections go; the arrays reconnect
        if run.cut_site == "a":  # the hosts lose their array: what was in flight is unknown
            for w in writers:
                await w.kill()
            for t in tasks:
                try:
                    await t
                except QemuIoError:
                    pass
            for w in writers:
                w.settle()
        else:  # the primary goes on without its peer
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        for w in writers:
            await w.close()


async def operator(run: Run, initial: bool = False, timeout: float = 60) -> None:
    """Wait for the group to settle; pairresync when it is suspended; pairsyncwait until DONE."""
    sites = run.sites
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[str] = []
    while True:
        assert loop.time() < deadline, f"the group never came back to PAIR: {seen}"
        g = (await command(sites.b.port, "site-b", 17, {"group": "g1"})).data["groups"][0]
        if not seen or seen[-1] != g["state"]:
            seen.append(g["state"])
        if g["state"] in ("PSUE", "PSUS"):
            r = await command(sites.b.port, "site-b", 19, {"group": "g1"}, check=False)
            assert r.status.name == "GOOD", f"pairresync refused: {r.status.name} {r.error} ({g})"
            run.stats["resync"] += 1
            seen.append("resync")
        elif g["state"] == "PAIR":
            r = await command(sites.b.port, "site-b", 25, {"group": "g1", "timeout": 30})
            if r.data["result"] == "DONE":
                break
            seen.append(r.data["result"])
        elif g["state"] not in ("COPY", "FENCED"):
            raise AssertionError(f"unexpected state after the cut: {g}")
        await asyncio.sleep(0.3)
    primary = (await command(sites.a.port, "site-a", 17, {"group": "g1"})).data["groups"][0]
    assert primary["state"] == "PAIR", f"the primary is {primary['state']} while the secondary says PAIR: {primary}"
    if not initial:
        run.states.append("->".join(seen))


async def check_equal(run: Run, when: str) -> None:
    """P-VOL == S-VOL (read over iSCSI), durable writes on them; with the primary never cut, every
    acknowledged write too, in an order the acknowledgements allow."""
    sites, ledger = run.sites, run.ledger
    p = {vol: await read_lun(sites.a.port, "site-a", vol) for vol in VOLS}
    s = {vol: await read_lun(sites.b.port, "site-b", vol) for vol in VOLS}
    for vol in VOLS:
        if p[vol] != s[vol]:
            pt, st = tags(ledger.model, vol, p[vol]), tags(ledger.model, vol, s[vol])
            bad = [b for b in range(BLOCKS) if pt[b] != st[b]]
            raise AssertionError(
                f"{when}: PAIR and pairsyncwait DONE, yet LUN {vol} differs in {len(bad)} blocks (seed {SEED}, "
                f"cuts {run.cuts}): " + "; ".join(f"block {b}: P {pt[b]} S {st[b]}" for b in bad[:10]))
    lost = durable_losses(ledger, p)
    assert not lost, f"{when}: durable writes lost: {lost[:5]}"
    if run.cut_site == "b":
        check_state(ledger.model, p, complete=True)
    run.stats["equal_checks"] += 1


async def read_lun(port: int, site: str, lun: int) -> bytes:
    s = IscsiSession()
    await s.login("127.0.0.1", port, iqn(site), initiator="iqn.2026-11.test:checker")
    try:
        r = await s.scsi(lun, read16(0, BLOCKS), read_length=VOL_SIZE)
    finally:
        await s.logout()
    assert r.status == 0, r
    return r.data


def read_file(path: Path) -> bytes:
    data = path.read_bytes()
    assert len(data) == VOL_SIZE, f"{path}: {len(data)} bytes"
    return data

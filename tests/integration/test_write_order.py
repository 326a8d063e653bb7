"""Write-order fidelity under faults: concurrent hosts (QUEUE_DEPTH writes in flight over SESSIONS
sessions, spread over both volumes of one journal group) while the remote link is cut and stalled
(through the project's fault proxy) and either array is killed with SIGKILL and restarted.

Invariants checked (``write_model.check_state``: the acknowledged writes give only a partial order,
a write acknowledged before another was issued comes first):
* whenever the secondary is killed, its S-VOL files on disk are the result of applying, in an order
  that respects the acknowledgements, a prefix of the writes;
* whenever the primary is killed, after its restart its P-VOLs hold every acknowledged write
  (writes in flight at the kill may or may not be there) and nothing it refused;
* after a final drain the S-VOLs equal the P-VOLs byte for byte and hold every acknowledged write.

A restarted primary is FENCED until its peer confirms its role: writes refused (DATA PROTECT) are
not acknowledged, never counted, and retried later as new writes.

The CI run does STORAGED_FAULT_CYCLES (default 24) fault cycles; the long run is
``STORAGED_FAULT_CYCLES=300 .venv/bin/python -m pytest tests/integration/test_write_order.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from storaged.faultproxy import FaultProxy
from storaged.iscsi.initiator import IscsiSession

from .daemon import wait_for
from .sites import Sites, free_port, iqn, start_sites
from .test_replication import command, write16
from .write_model import CheckResult, Model, OrderViolation, Write, block_bytes, check_state, payload, tags

VOLS = {0: "data0.img", 5: "data5.img"}  # P-VOL LUN -> S-VOL file on site-b (same LUN numbers)
VOL_SIZE = 8 << 20
BLOCKS = VOL_SIZE // 512
CYCLES = int(os.environ.get("STORAGED_FAULT_CYCLES", "24"))
QUEUE_DEPTH, SESSIONS = 12, 3
GOOD, CHECK_CONDITION, BUSY, TASK_SET_FULL = 0, 2, 8, 0x28
NOT_READY, DATA_PROTECT = 2, 7  # refusals: fenced (DATA PROTECT), or held at a fence (NOT READY)


@pytest.mark.integration
@pytest.mark.slow
def test_write_order_fidelity_under_faults(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("STORAGED_FAULT_SEED", "20261126")))
    link_a, link_b = free_port(), free_port()
    # a journal that holds what unclean restarts re-journal (every active extent: up to 16 MiB each)
    extra = [{"lun": 5, "size": "8MiB", "file": "data5.img"}, {"lun": 6, "size": "256MiB", "file": "jnl6.img"}]
    # site-b reaches site-a's link through the proxy (the direction replication uses)
    proxy_port = free_port()
    sites = start_sites(tmp_path, ports=(link_a, link_b),
                        a_extra={"extra_luns": extra},
                        b_extra={"extra_luns": extra, "peer_address": f"127.0.0.1:{proxy_port}"})
    model = Model()
    stats: Counter[str] = Counter()

    async def scenario() -> None:
        proxy = FaultProxy(("127.0.0.1", proxy_port), ("127.0.0.1", link_a))
        await proxy.start()
        writers = Writers(sites, model, rng)

        async def kill_secondary() -> None:
            """SIGKILL site-b and check that its S-VOL files are a state the group may pass through."""
            sites.b.kill()
            files = {vol: await asyncio.to_thread(read_file, tmp_path / "b" / f) for vol, f in VOLS.items()}
            note(stats, check_state(model, files, complete=False), "prefix")

        try:
            assert await asyncio.to_thread(sites.linked)
            for vol in VOLS:
                r = await command(sites.b.port, "site-b", 16, {"group": "g1", "peer": "site-a", "pvol": vol,
                                                               "svol": vol, "pjnl": 6, "sjnl": 6})
                assert r.data["state"] == "COPY"
                await wait_pair(sites)
            for _ in range(CYCLES):
                await writers.burst(rng.randrange(10, 50))
                fault = rng.choice(["kill_b", "kill_a", "cut", "stall"])
                stats[fault] += 1
                during = asyncio.ensure_future(writers.burst(rng.randrange(10, 40) if fault != "kill_a" else 60))
                await asyncio.sleep(rng.uniform(0.0, 0.05))
                if fault == "kill_b":
                    await kill_secondary()
                    await asyncio.to_thread(sites.b.start)
                    await during
                elif fault == "kill_a":
                    writers.expect_drop = True
                    sites.a.kill()
                    await during
                    writers.expect_drop = False
                    await writers.close(logout=False)  # its connections died with it
                    fenced = rng.random() < 0.5  # site-b away too: site-a stays fenced until it is back
                    if fenced:
                        stats["kill_a_with_b_away"] += 1
                        await kill_secondary()
                    await asyncio.to_thread(sites.a.start)
                    volumes = {vol: await read_lun(sites.a.port, "site-a", vol) for vol in VOLS}
                    note(stats, check_state(model, volumes, complete=True), "restart")
                    if fenced:
                        during = asyncio.ensure_future(writers.burst(rng.randrange(10, 40)))  # refused for now
                        await asyncio.sleep(rng.uniform(0.2, 0.8))
                        await asyncio.to_thread(sites.b.start)
                        await during
                else:
                    if fault == "cut":
                        proxy.faults.refuse = True
                        proxy.cut()
                    else:
                        proxy.faults.set(stall=True)
                    await during
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    proxy.faults.refuse = False
                    proxy.faults.set(stall=False)
            await writers.close()
            assert await asyncio.to_thread(
                lambda: wait_for(lambda: "remote link to site-a is up" in sites.b.log, 30))
            primary = (await command(sites.a.port, "site-a", 17, {"group": "g1"})).data["groups"][0]
            assert primary["state"] == "PAIR", f"the primary suspended replication: {primary}"
            r = await command(sites.b.port, "site-b", 25, {"group": "g1", "timeout": 90})
            assert r.data["result"] == "DONE", r.data
            p = {vol: await read_lun(sites.a.port, "site-a", vol) for vol in VOLS}
            s = {vol: await read_lun(sites.b.port, "site-b", vol) for vol in VOLS}
            for vol in VOLS:
                assert p[vol] == s[vol], differ(model, vol, p[vol], s[vol])
            note(stats, check_state(model, s, complete=True), "final")
        finally:
            await writers.close()
            await proxy.close()
        stats["max_in_flight"] = writers.max_in_flight

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()
        for name, proc in (("a", sites.a), ("b", sites.b)):  # kept with tmp_path for a failure's diagnosis
            (tmp_path / f"site-{name}.log").write_text(proc.log)
    print(f"\nfault cycles: {CYCLES} {dict(stats)}; writes issued {len(model.writes)}, acknowledged "
          f"{model.count('acked')}, refused {model.count('refused')}, lost in a primary kill {model.count('lost')}")
    assert stats["max_in_flight"] >= 8, "the writers never reached queue depth 8"
    assert model.count("refused") > 0 or stats["kill_a_with_b_away"] == 0, "a restarted primary was never fenced"
    assert stats["prefix"] >= 1 or CYCLES < 8


def note(stats: Counter[str], result: CheckResult, kind: str) -> None:
    """Count the check and the overwrites it saw ordered against issue order (concurrency at work)."""
    stats[kind] += 1
    stats["reordered_" + kind] += result.reordered


def differ(model: Model, vol: int, p: bytes, s: bytes) -> str:
    """Which blocks differ after the drain, and which write each side shows there."""
    pt, st = tags(model, vol, p), tags(model, vol, s)
    bad = [b for b in range(len(pt)) if pt[b] != st[b]]
    shown = [f"block {b}: P {pt[b]} S {st[b]}" for b in bad[:8]]
    writes = {i for b in bad[:8] for i in (pt[b], st[b]) if i}
    return (f"LUN {vol}: P-VOL and S-VOL differ after the drain in {len(bad)} blocks: {'; '.join(shown)}; "
            + "; ".join(model.writes[i - 1].describe() for i in sorted(writes)))


async def wait_pair(sites: Sites) -> None:
    for _ in range(300):
        r = await command(sites.b.port, "site-b", 17, {"group": "g1"})
        if r.data["groups"][0]["state"] == "PAIR":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"never reached PAIR: {r.data}")


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(VOL_SIZE).ljust(VOL_SIZE, b"\0")


async def read_lun(port: int, site: str, lun: int) -> bytes:
    s = IscsiSession()
    await s.login("127.0.0.1", port, iqn(site), initiator="iqn.2026-11.test:checker")
    r = await s.scsi(lun, bytes([0x88, 0]) + (0).to_bytes(8, "big") + BLOCKS.to_bytes(4, "big") + b"\0\0",
                     read_length=VOL_SIZE)
    await s.logout()
    assert r.status == GOOD, r
    return r.data


class Writers:
    """QUEUE_DEPTH writers over SESSIONS sessions to site-a, each writing to a random volume.

    A write counts only when it got GOOD. A refusal (CHECK CONDITION DATA PROTECT or NOT READY
    while the primary is fenced, BUSY, TASK SET FULL) is never applied, must never show on a volume,
    and is retried later as a new write. A write in flight when the primary is killed
    (``expect_drop``) has an unknown outcome, settled at the time its connection died. Any other
    failure fails the test."""

    def __init__(self, sites: Sites, model: Model, rng: random.Random) -> None:
        self.sites = sites
        self.model = model
        self.rng = rng
        self.sessions: list[IscsiSession | None] = [None] * SESSIONS
        self.logins = [asyncio.Lock() for _ in range(SESSIONS)]
        self.expect_drop = False
        self.in_flight = 0
        self.max_in_flight = 0
        self.left = 0

    async def _session(self, k: int) -> IscsiSession:
        async with self.logins[k]:  # the slot's workers share one session
            s = self.sessions[k]
            if s is None:
                s = IscsiSession()
                await s.login("127.0.0.1", self.sites.a.port, iqn("site-a"), initiator=f"iqn.2026-11.test:app{k}")
                self.sessions[k] = s
            return s

    async def burst(self, n: int) -> None:
        """``n`` more acknowledged writes, QUEUE_DEPTH at a time (fewer if the primary is killed)."""
        self.left += n
        await asyncio.gather(*(self._worker(k % SESSIONS) for k in range(QUEUE_DEPTH)))

    async def _worker(self, k: int) -> None:
        loop = asyncio.get_running_loop()
        refused_since: float | None = None
        while self.left > 0:
            self.left -= 1
            while True:
                got = await self._write_one(k)
                if got is None:  # the primary was killed: this worker is done
                    self.left = 0
                    return
                if got:
                    break
                refused_since = refused_since or loop.time()
                assert loop.time() - refused_since < 60, "writes refused for 60 s (fence never lifted?)"
                await asyncio.sleep(self.rng.uniform(0.02, 0.1))
            refused_since = None

    async def _write_one(self, k: int) -> bool | None:
        """True: acknowledged; False: refused (retry); None: the session died with the primary."""
        vol = self.rng.choice(list(VOLS))
        n = self.rng.choice([1, 1, 2, 8, 32])
        lba = self.rng.randrange(0, BLOCKS - n)
        w: Write | None = None
        try:
            s = await self._session(k)
            w = self.model.issue(vol, lba, n)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                r = await s.scsi(vol, write16(lba, n), data_out=payload(w), timeout=30)
            finally:
                self.in_flight -= 1
        except Exception:
            if not self.expect_drop:
                raise
            if w is not None:
                self.model.lose(w)
            await self._drop(k)
            return None
        if r.status == GOOD:
            self.model.ack(w)
            return True
        self.model.refuse(w)
        assert (r.status == CHECK_CONDITION and r.sense_key in (NOT_READY, DATA_PROTECT)) \
            or r.status in (BUSY, TASK_SET_FULL), \
            f"{w.describe()}: status {r.status:#x} sense {r.sense.hex()}"
        return False

    async def _drop(self, k: int) -> None:
        s, self.sessions[k] = self.sessions[k], None
        if s is not None:
            await s.close()

    async def close(self, logout: bool = True) -> None:
        for k in range(SESSIONS):
            s, self.sessions[k] = self.sessions[k], None
            if s is not None:
                await (s.logout() if logout else s.close())


# --- the check itself, on hand-made histories: it accepts what concurrency allows and fails otherwise ---


def state(model: Model, blocks: int, shows: dict[int, int]) -> dict[int, bytes]:
    """LUN 0 of ``blocks`` blocks where block b holds write shows[b]'s bytes."""
    raw = bytearray(blocks * 512)
    for blk, i in shows.items():
        w = model.writes[i - 1]
        raw[blk * 512 : (blk + 1) * 512] = block_bytes(i, w.volume, blk)
    return {0: bytes(raw)}


def history(*spans: tuple[int, int, int, int | None]) -> Model:
    """Writes to LUN 0 as (lba, blocks, issue tick, ack tick or None)."""
    m = Model()
    for lba, n, issued, acked in spans:
        m.writes.append(Write(len(m.writes) + 1, 0, lba, n, issued, acked))
    return m


def test_check_accepts_either_order_of_concurrent_writes_and_rejects_a_real_time_inversion() -> None:
    concurrent = history((0, 2, 1, 3), (1, 2, 2, 4))  # both in flight at tick 2-3, overlap in block 1
    for top in (1, 2):
        check_state(concurrent, state(concurrent, 4, {0: 1, 1: top, 2: 2}), complete=True)
    ordered = history((0, 2, 1, 2), (1, 2, 3, 4))  # 1 acknowledged before 2 was issued
    check_state(ordered, state(ordered, 4, {0: 1, 1: 2, 2: 2}), complete=True)
    with pytest.raises(OrderViolation, match="no order respecting"):
        check_state(ordered, state(ordered, 4, {0: 1, 1: 1, 2: 2}), complete=True)


def test_check_accepts_prefixes_and_rejects_holes() -> None:
    m = history((0, 1, 1, 2), (1, 1, 3, 4), (2, 1, 3, None))  # 3 still in flight
    for shows in ({}, {0: 1}, {0: 1, 1: 2}, {0: 1, 2: 3}, {0: 1, 1: 2, 2: 3}):
        check_state(m, state(m, 4, shows), complete=False)
    with pytest.raises(OrderViolation, match="never written"):
        check_state(m, state(m, 4, {1: 2}), complete=False)  # 2 without 1, acknowledged before 2 was issued
    with pytest.raises(OrderViolation, match="nothing acknowledged may be lost"):
        check_state(m, state(m, 4, {0: 1}), complete=True)


def test_check_rejects_refused_torn_and_misplaced_blocks() -> None:
    m = history((0, 2, 1, 2), (2, 1, 3, None))
    m.writes[1].refused = True
    with pytest.raises(OrderViolation, match="refused"):
        check_state(m, state(m, 4, {0: 1, 1: 1, 2: 2}), complete=False)
    good = state(m, 4, {0: 1, 1: 1})[0]
    for bad in (good[:600] + b"\xff" + good[601:], good[512:1024] + good[512:]):
        with pytest.raises(OrderViolation, match="no write put there"):
            check_state(m, {0: bad}, complete=False)


def test_check_orders_a_write_lost_in_a_crash_before_later_writes() -> None:
    m = history((0, 1, 1, None), (0, 1, 3, 4))
    m.writes[0].settled = 2  # the primary died with write 1 in flight; write 2 went to the new primary
    check_state(m, state(m, 2, {0: 2}), complete=True)
    with pytest.raises(OrderViolation, match="no order respecting"):
        check_state(m, state(m, 2, {0: 1}), complete=True)
    m.writes[0].settled = None  # still in flight: either order is possible
    check_state(m, state(m, 2, {0: 1}), complete=True)

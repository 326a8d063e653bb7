"""Regression tests for replication defects 2, 3, 6, 7, 9, 10, 11 and 13 (issue 7), in process.

Two real arrays (``site-a`` primary, ``site-b`` secondary) from the simulator (``storaged.sim``):
simulated disks, a link that calls the peer's real handlers, virtual time, so every test is
deterministic and takes well under a second. Faults are injected only at the edges (a disk, the
link, a third caller), and everything is observed through public entry points (the Replication
methods, remote-link calls, command-device commands, hostctl's replicate loop), so the same file
runs against the code before the fixes, where each test fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from hostctl.errors import ArrayError
from hostctl.pairs import Replicator
from storaged.cmddev.block import Command, ResultStatus
from storaged.cmddev.commands import Process
from storaged.cmddev.dispatch import CommandError
from storaged.config import (
    ArrayConfig,
    IscsiConfig,
    LunConfig,
    PeerConfig,
    RemoteConfig,
    ReplicationConfig,
    TargetConfig,
)
from storaged.remote.api import LinkDown, RemoteError
from storaged.sim.disk import BLOCK, SimDisk
from storaged.sim.link import NetFaults
from storaged.sim.loop import run_virtual
from storaged.sim.node import TARGET, SimNode
from storaged.sim.world import World

G = "g1"
VOL, JNL = 0, 2
RING = 4096  # the journal's superblock (and activity log) area ends here; entries start here


class FlakyDisk(SimDisk):
    """A disk whose next write into the journal ring fails once (EIO), when armed."""

    armed = False

    def apply(self, offset: int, data: bytes, forced: bool) -> None:
        if self.armed and offset >= RING:
            self.armed = False
            raise OSError(5, f"{self.name}: injected write error at {offset}")
        super().apply(offset, data, forced)


class TwoTargetNode(SimNode):
    """An array whose first target holds an unrelated LUN; the group's LUNs are on its second."""

    def config(self, data_dir: str) -> ArrayConfig:
        def lun(n: int) -> LunConfig:
            return LunConfig(lun=n, file=f"lun{n}.img", size=self.disks[n].size, thin=True)

        return ArrayConfig(
            name=self.name, data_dir=data_dir, iscsi=IscsiConfig(),
            targets=(TargetConfig(TARGET, (lun(7),)), TargetConfig(second_target(self.name), (lun(VOL), lun(JNL)))),
            remote=RemoteConfig(peers=(PeerConfig(self.peer, "sim:0", "sim-secret"),), io_timeout=self.io_timeout),
            replication=ReplicationConfig(interval=self.interval))


def second_target(name: str) -> str:
    return f"iqn.2027-01.io.storaged.sim:{name}-second"


class EdgeLink:
    """site-b's link to site-a with faults at the edge: READs of a LUN held at a gate, and the reply
    to one call method lost once after the peer acted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gates: dict[int, asyncio.Event] = {}
        self.lose_reply_of = ""
        self.drop_request_of = ""  # lost before the peer sees it (once)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read(self, target: str, lun: int, offset: int, length: int, origin: str | None = None) -> bytes:
        gate = self.gates.get(lun)
        if gate is not None:
            await gate.wait()
        data: bytes = await self.inner.read(target, lun, offset, length, origin)
        return data

    async def call(self, method: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if method == self.drop_request_of:
            self.drop_request_of = ""
            raise LinkDown(f"link to {self.inner.dst} dropped before {method} was sent")
        result: dict[str, Any] = await self.inner.call(method, params, timeout)
        if method == self.lose_reply_of:
            self.lose_reply_of = ""
            raise LinkDown(f"link to {self.inner.dst} dropped before the answer to {method} arrived")
        return result


class Device:
    """hostctl's command-device client for one array, in process (its dispatcher, without SCSI)."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.where = node.name

    async def run(self, process: int, params: dict[str, Any] | None = None, *, timeout: float = 30.0,
                  **_: Any) -> Any:
        resp = await self.node.array.dispatcher.execute(Command(int(process), 1, dict(params or {})), "host")
        if resp.status != ResultStatus.OK:
            raise ArrayError(self.where, resp.status, resp.error, int(process), resp.data)
        return resp


class Sites:
    """The two arrays of one test and what the tests do with them."""

    def __init__(self, base: str, journal: int, node_cls: type[SimNode] = SimNode) -> None:
        self.world = World(7, base, NetFaults(latency=0.0002))
        self.node_cls = node_cls
        for name, peer in (("site-a", "site-b"), ("site-b", "site-a")):
            rng = self.world.rng
            disks: dict[int, SimDisk] = {VOL: SimDisk(f"{name}:{VOL}", 1 << 20, rng, 1.0, lambda: 0.0),
                                         JNL: FlakyDisk(f"{name}:{JNL}", journal, rng, 1.0, lambda: 0.0)}
            if node_cls is TwoTargetNode:
                disks[7] = SimDisk(f"{name}:7", 64 << 10, rng, 1.0, lambda: 0.0)
            self.world.attach(node_cls(self.world, name, peer, base, disks, interval=0.05, io_timeout=2.0))
        self.a, self.b = self.world.nodes["site-a"], self.world.nodes["site-b"]
        self.tag = 0

    async def boot(self) -> EdgeLink:
        for n in (self.a, self.b):
            await n.boot()
        link = EdgeLink(self.b.array.links["site-a"])
        self.b.array.links["site-a"] = link  # type: ignore[assignment]
        return link

    def target(self, node: SimNode) -> str:
        return second_target(node.name) if self.node_cls is TwoTargetNode else TARGET

    def group(self, node: SimNode) -> Any:
        return node.array.repl.groups.get(G)

    def state(self, node: SimNode) -> str:
        g = self.group(node)
        return "SMPL" if g is None else str(g.state)

    async def create(self, wait: bool = True) -> None:
        params: dict[str, Any] = {"group": G, "peer": "site-a", "pvol": VOL, "svol": VOL, "pjnl": JNL, "sjnl": JNL}
        if self.node_cls is TwoTargetNode:
            params.update(target=self.target(self.b), peer_target=self.target(self.a))
        await self.b.array.repl.pair_create(params, "test")
        if wait:
            assert await until(lambda: self.state(self.a) == self.state(self.b) == "PAIR"), self.states()

    async def write(self, block: int, nblocks: int = 8) -> None:
        """A host write to the P-VOL; every block says which write and which block it is."""
        self.tag += 1
        data = b"".join(struct.pack("<QQ", self.tag, block + i) * (BLOCK // 16) for i in range(nblocks))
        lu = self.a.array.luns[(self.target(self.a), VOL)].lu
        assert lu is not None and not lu.write_protected
        await lu.store(block * BLOCK, data, False)

    def states(self) -> str:
        return " / ".join(f"{n.name} {self.state(n)} {getattr(self.group(n), 'error', '')!r}" for n in (self.a, self.b))

    def same(self) -> bool:
        return self.a.disks[VOL].cur == self.b.disks[VOL].cur

    async def synced(self) -> None:
        """Both sides PAIR with everything restored: syncwait DONE."""
        for _ in range(4):
            if self.state(self.a) == self.state(self.b) == "PAIR":
                r = await self.b.array.repl.syncwait(G, None, 3.0)
                if r["result"] == "DONE":
                    return
            await asyncio.sleep(0.5)
        raise AssertionError(f"never in PAIR with everything restored: {self.states()}")

    async def converge(self) -> None:
        """What an operator does after an error: resync a suspended pair, then wait until synced."""
        for _ in range(6):
            if self.state(self.b) in ("PSUS", "PSUE"):
                with contextlib.suppress(CommandError):
                    await self.b.array.repl.resync(G, False)
            await until(lambda: self.state(self.b) != "COPY", 5.0)
            if self.state(self.a) == self.state(self.b) == "PAIR":
                r = await self.b.array.repl.syncwait(G, None, 3.0)
                if r["result"] == "DONE":
                    return
            await asyncio.sleep(0.5)


async def until(cond: Callable[[], bool], limit: float = 20.0) -> bool:
    """Wait (virtual time) until ``cond()`` holds, at most ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Replication rounds that fail on the old code log a traceback every round: keep them out."""
    log = logging.getLogger("storaged")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    yield
    log.setLevel(level)


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """``asyncio.to_thread`` work (``save_async``) run at once: the virtual loop cannot wait for a
    thread (with no timer pending it stops as Stalled), and a thread's timing is not deterministic."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            fut.set_exception(exc)
        return fut


def run(tmp_path: Any, body: Callable[[Sites, EdgeLink], Awaitable[None]], journal: int = 256 << 10,
        node_cls: type[SimNode] = SimNode) -> None:
    sites = Sites(str(tmp_path), journal, node_cls)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(InlineExecutor(max_workers=1))
        link = await sites.boot()
        await body(sites, link)

    run_virtual(main, sites.world.clock, sites.world.rng)


# --- defect 13: groups on any target -----------------------------------------------------------


def test_a_pair_on_the_second_target_of_each_array_replicates(tmp_path: Any) -> None:
    """Defect 13: replication used each array's first target only. Here the P-VOL, S-VOL and both
    journals are on a second target (named differently on each array); the first targets hold
    nothing of the group."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.write(0, 16)
        await s.create()
        for i in range(10):
            await s.write(64 * i + 5)
        await s.synced()
        assert s.same()
        assert s.group(s.b).target == second_target("site-b")
        assert s.group(s.a).target == second_target("site-a")

    run(tmp_path, body, node_cls=TwoTargetNode)


# --- defect 11: only the group's peer may act on it ---------------------------------------------


def test_a_third_array_cannot_purge_fence_split_or_delete_the_group(tmp_path: Any) -> None:
    """Defect 11: repl.* handlers did not check that the caller is the group's peer."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        link.gates[JNL] = asyncio.Event()  # site-b acquires nothing more: entries stay in the journal
        for i in range(4):
            await s.write(16 * i)
        repl = s.a.array.repl
        before = await repl.primary_status(G)
        assert before["next_seq"] - before["out_seq"] == 4
        calls = [("repl.purge", {"upto_pos": before["journal_in"], "upto_seq": before["next_seq"]}),
                 ("repl.fence", {"why": "site-c says so"}), ("repl.split", {}), ("repl.delete", {})]
        for method, params in calls:
            with pytest.raises(RemoteError):
                await repl.handle_call("site-c", method, {"group": G, **params})
        after = await repl.primary_status(G)
        assert (after["out_seq"], after["next_seq"]) == (before["out_seq"], before["next_seq"])
        assert s.state(s.a) == "PAIR" and not s.group(s.a).fenced
        await s.write(200)  # the P-VOL still takes host writes
        with pytest.raises(RemoteError):  # the secondary's forwarded commands too
            await s.b.array.repl.handle_call("site-c", "repl.forward", {"op": "delete", "group": G})
        assert s.state(s.b) == "PAIR"
        link.gates.pop(JNL).set()
        await s.synced()
        assert s.same()

    run(tmp_path, body)


def test_repl_state_cannot_set_a_state_outside_the_table(tmp_path: Any) -> None:
    """Defect 11: repl.state accepted any string as the primary's state."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        with contextlib.suppress(RemoteError):
            await s.a.array.repl.handle_call("site-b", "repl.state", {"group": G, "state": "BOGUS"})
        assert s.state(s.a) == "PAIR"

    run(tmp_path, body)


def test_a_third_array_cannot_use_the_groups_luns_over_the_link(tmp_path: Any) -> None:
    """Defect 11: Array.volume ignored the peer, so any peer could read or write the journal LUN
    and the volumes of a group over the link (the S-VOL, the primary journal)."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        assert s.a.array.volume("site-b", "", JNL) is not None  # the group's peer may
        assert s.a.array.volume("site-b", "", VOL) is not None
        for node in (s.a, s.b):
            for lun in (VOL, JNL):
                assert node.array.volume("site-c", "", lun) is None, f"{node.name} LUN {lun} served to site-c"

    run(tmp_path, body)


# --- defect 7: purge trusts the position it is given ----------------------------------------------


async def _held_entries(s: Sites, link: EdgeLink) -> dict[str, Any]:
    """PAIR, then four entries site-b cannot acquire (its journal reads wait at a gate)."""
    await s.create()
    link.gates[JNL] = asyncio.Event()
    for i in range(4):
        await s.write(16 * i)
    st: dict[str, Any] = await s.a.array.repl.primary_status(G)
    assert st["next_seq"] - st["out_seq"] == 4
    return st


def test_a_host_purge_past_what_the_secondary_restored_is_refused(tmp_path: Any) -> None:
    """Defect 7: JOURNAL_PURGE from a host freed entries the secondary had not restored."""

    async def body(s: Sites, link: EdgeLink) -> None:
        st = await _held_entries(s, link)
        with pytest.raises(ArrayError):
            await Device(s.a).run(Process.JOURNAL_PURGE,
                                  {"group": G, "upto_pos": st["journal_in"], "upto_seq": st["next_seq"]})
        after = await s.a.array.repl.primary_status(G)
        assert (after["journal_out"], after["out_seq"]) == (st["journal_out"], st["out_seq"])
        link.gates.pop(JNL).set()
        await s.synced()
        assert s.same()

    run(tmp_path, body)


def test_a_purge_to_a_position_that_does_not_hold_the_entry_is_refused(tmp_path: Any) -> None:
    """Defect 7: purge checked only the sequence range; a position inside an entry (here the
    second block of entry 1, given as where entry 2 starts) moved journal-out there."""

    async def body(s: Sites, link: EdgeLink) -> None:
        st = await _held_entries(s, link)
        bogus = {"group": G, "upto_pos": st["journal_out"] + BLOCK, "upto_seq": st["out_seq"] + 1}
        with pytest.raises(RemoteError):
            await s.a.array.repl.handle_call("site-b", "repl.purge", bogus)
        after = await s.a.array.repl.primary_status(G)
        assert (after["journal_out"], after["out_seq"]) == (st["journal_out"], st["out_seq"])
        link.gates.pop(JNL).set()
        await s.synced()
        assert s.same()

    run(tmp_path, body)


# --- defects 9 and 10: takeover's view of the primary -------------------------------------------


def test_takeover_dry_run_with_the_primary_unreachable_says_what_is_unknown(tmp_path: Any) -> None:
    """Defect 9: the dry run reported 0 entries at risk as of the last poll, however old. Now it
    says the risk is not known and how long ago the primary was last heard from."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        s.world.net.partitioned = True
        s.world.net.cut("test: the primary site is gone")
        await asyncio.sleep(6.0)
        plan = await s.b.array.repl.takeover(G, dry_run=True)
        assert plan["primary_reachable"] is False and plan["variant"] == "svol-takeover"
        risk = plan["at_risk"]
        assert risk.get("known") is False, plan
        age = risk.get("last_contact_age_s")
        assert isinstance(age, (int, float)) and age >= 6.0, plan
        assert s.state(s.b) == "PAIR" and not s.group(s.b).writable  # a dry run changes nothing

    run(tmp_path, body)


def test_takeover_refuses_when_the_primary_answers_with_an_error(tmp_path: Any) -> None:
    """Defect 10: any error answer to the status call counted as "unreachable": SSWS, S-VOL
    writable, while the primary was up and taking writes (two writable sides)."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.synced()

        async def failing(name: str, at_pos: int | None = None) -> dict[str, Any]:
            raise OSError(5, "journal LUN read failed")

        s.a.array.repl.primary_status = failing  # type: ignore[method-assign]
        with pytest.raises(CommandError):
            await s.b.array.repl.takeover(G, dry_run=False)
        assert s.state(s.b) == "PAIR" and not s.group(s.b).writable, s.states()
        lu = s.b.array.luns[(TARGET, VOL)].lu
        assert lu is not None and lu.write_protected
        await s.write(8)  # the primary still takes host writes

    run(tmp_path, body)


# --- defect 3: resync regions lost with a lost reply ---------------------------------------------


def test_resync_regions_survive_a_lost_resync_reply(tmp_path: Any) -> None:
    """Defect 3: the primary dropped its dirty regions before replying to repl.resync; a lost
    reply left the retry with nothing to copy and the S-VOL without the writes made while split."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.b.array.repl.split(G, False)
        for i in range(6):
            await s.write(300 * i + 3)
        link.lose_reply_of = "repl.resync"
        with pytest.raises(CommandError):
            await s.b.array.repl.resync(G, False)
        assert not link.lose_reply_of, "the primary never got repl.resync"
        await s.write(100)  # between the lost reply and the retry
        await s.b.array.repl.resync(G, False)
        await s.write(300)
        await s.synced()
        assert s.same(), "S-VOL lacks writes made while split"

    run(tmp_path, body)


# --- defect 6: a journal write failure is cleared by resync --------------------------------------


def test_pairresync_after_a_journal_write_failure_journals_again(tmp_path: Any) -> None:
    """Defect 6: after one failed journal write (PSUE), every pairresync suspended again at the
    next write until the array restarted (journal.broken was never cleared)."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        disk = s.a.disks[JNL]
        assert isinstance(disk, FlakyDisk)
        disk.armed = True
        await s.write(40)  # its journal entry fails; the host write succeeds, tracked in the bitmap
        assert not disk.armed
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PSUE"), s.states()
        await s.write(80)
        await s.b.array.repl.resync(G, False)
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR"), s.states()
        for i in range(5):
            await s.write(120 + 16 * i)  # journaled again, not suspended
        await s.synced()
        assert s.same()

    run(tmp_path, body)


# --- defect 2: unrestored secondary entries overwritten during COPY ------------------------------


def test_host_replicate_during_a_long_copy_does_not_overwrite_unrestored_entries(tmp_path: Any) -> None:
    """Defect 2: `hostctl replicate` purged while the group copied (restore waits in COPY); the
    primary reused the purged ring space and the secondary, whose ring mirrors the primary's
    positions, overwrote entries it had not restored: JournalCorrupt every round, PAIR shown.
    Now the purge is held to the restored point, so the journal fills (PSUE) instead, and a
    resync brings the pair back with P == S."""

    async def body(s: Sites, link: EdgeLink) -> None:
        link.gates[VOL] = asyncio.Event()  # the initial copy of the P-VOL takes long
        await s.create(wait=False)
        rep = Replicator(Device(s.a), Device(s.b), G, 30.0)  # type: ignore[arg-type]
        capacity = (await s.a.array.repl.primary_status(G))["capacity"]
        written = 0
        while written < 3 * capacity:  # three times round the ring during the copy
            for _ in range(3):
                await s.write(8 * (s.tag % 200))
                written += 8 * BLOCK
            with contextlib.suppress(ArrayError):  # the fixed array refuses the purge
                await rep.round()
            assert s.state(s.b) == "COPY"
        link.gates.pop(VOL).set()
        await s.converge()
        g = s.group(s.b)
        assert "JournalCorrupt" not in g.error, s.states()
        assert s.state(s.a) == s.state(s.b) == "PAIR", s.states()
        assert s.same()

    run(tmp_path, body, journal=64 << 10)


# --- a copy the primary stopped journaling during is not a consistent S-VOL ----------------------


def test_a_copy_during_which_the_primary_suspended_is_reported_inconsistent(tmp_path: Any) -> None:
    """The initial copy reads the P-VOL while the primary journals every write; if the primary
    suspends meanwhile (a journal write fails: PSUE, later writes only in its bitmap), the copy may
    read writes the journal never got. Restoring the journal up to the end of such a copy does not
    make a prefix: the secondary must stay inconsistent (pairdisplay says so, takeover refuses)
    until a resync has copied the bitmap's regions, and then reach P == S."""

    async def body(s: Sites, link: EdgeLink) -> None:
        link.gates[VOL] = asyncio.Event()  # the copy waits for its reads
        await s.create(wait=False)
        await s.write(0)
        disk = s.a.disks[JNL]
        assert isinstance(disk, FlakyDisk)
        disk.armed = True
        await s.write(16)  # its journal entry fails: the primary suspends, tracks it in the bitmap
        assert await until(lambda: s.state(s.a) == "PSUE"), s.states()
        for i in range(4):
            await s.write(64 + 16 * i)  # unjournaled, and the copy will read them
        link.gates.pop(VOL).set()
        assert await until(lambda: s.state(s.b) == "PSUE"), s.states()
        shown = (await s.b.array.repl.display(G))["groups"][0]
        assert shown.get("svol_consistent") is False, shown
        with pytest.raises(CommandError, match="inconsistent"):
            await s.b.array.repl.takeover(G, dry_run=False)
        assert not s.group(s.b).writable
        await s.converge()
        assert s.state(s.a) == s.state(s.b) == "PAIR", s.states()
        assert (await s.b.array.repl.display(G))["groups"][0]["svol_consistent"] is True
        assert s.same()

    run(tmp_path, body)


def test_a_secondary_that_missed_a_resync_does_not_restore_entries_that_presume_its_copy(tmp_path: Any) -> None:
    """Found by the simulator (crash_primary): a resync whose reply is lost leaves the primary
    journaling again (COPY) and the secondary suspended, without the regions written meanwhile.
    If the primary then suspends again (here a journal write fails; in the simulator a restart),
    the secondary saw PSUE on both sides and restored the entries journaled after that resync on
    top of S-VOLs that lack the regions the copy was to bring: a state no prefix gives, shown as
    PSUE, which a takeover would then serve. Those entries wait for the secondary's own resync."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.synced()
        disk = s.a.disks[JNL]
        assert isinstance(disk, FlakyDisk)
        disk.armed = True
        await s.write(0)  # the journal write fails: PSUE, tracked in the bitmap
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PSUE"), s.states()
        await s.write(0)  # W1 (bitmap only)
        link.lose_reply_of = "repl.resync"
        with pytest.raises(CommandError):
            await s.b.array.repl.resync(G, False)
        assert s.state(s.a) == "COPY" and s.state(s.b) == "PSUE", s.states()
        await s.write(512)  # W2: journaled, after W1 in the primary's order
        disk.armed = True
        await s.write(1024)  # the journal fails again: the primary is PSUE once more
        assert await until(lambda: s.state(s.a) == "PSUE"), s.states()
        await asyncio.sleep(2.0)  # the secondary's rounds see PSUE on both sides
        sv = s.b.disks[VOL].cur
        pv = s.a.disks[VOL].cur
        w2_there = sv[512 * BLOCK:513 * BLOCK] == pv[512 * BLOCK:513 * BLOCK]
        w1_there = sv[0:BLOCK] == pv[0:BLOCK]
        assert w1_there or not w2_there, "S-VOL holds W2 without W1: not a prefix of the primary's order"
        await s.converge()
        assert s.state(s.a) == s.state(s.b) == "PAIR", s.states()
        assert s.same()

    run(tmp_path, body)


# --- a swap whose last message is lost ------------------------------------------------------------


@pytest.mark.parametrize("lost", ["request", "reply"])
def test_a_swap_whose_become_secondary_is_lost_still_ends_with_one_primary(tmp_path: Any, lost: str) -> None:
    """Found by the simulator (takeover, swap_back): the new primary told the old one to become
    its secondary once; with that request lost, both arrays stayed primary (the old one fenced)
    and nothing retried. The new primary now persists the request and repeats it until answered;
    a repeat the old primary already acted on is answered as done."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        if lost == "request":
            link.drop_request_of = "repl.become_secondary"
        else:
            link.lose_reply_of = "repl.become_secondary"
        with contextlib.suppress(CommandError):
            await s.b.array.repl.takeover(G, dry_run=False)
        assert s.group(s.b).role == "primary"
        assert await until(lambda: s.group(s.a).role == "secondary", 10.0), s.states()
        lu = s.b.array.luns[(TARGET, VOL)].lu
        assert lu is not None and not lu.write_protected
        await lu.store(64 * BLOCK, b"n" * 4096, False)
        assert await until(lambda: s.a.disks[VOL].cur == s.b.disks[VOL].cur, 10.0), s.states()

    run(tmp_path, body)


def test_the_secondary_loop_logs_with_its_group_and_peer_as_fields(tmp_path: Any) -> None:
    """``--log-format json`` shows context as fields: the secondary's own loop names its group."""
    from storaged.logfmt import context_fields

    seen: list[tuple[str, dict[str, Any]]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), context_fields(record)))

    repl_log = logging.getLogger("storaged.repl")
    handler, level = Capture(), repl_log.level
    repl_log.addHandler(handler)
    repl_log.setLevel(logging.INFO)
    try:
        run(tmp_path, lambda s, _link: s.create())
    finally:
        repl_log.removeHandler(handler)
        repl_log.setLevel(level)
    done = [f for m, f in seen if "copy done" in m]
    assert done and done[0].get("group") == G and done[0].get("peer") == "site-a", seen


def test_a_swap_is_not_made_while_the_primary_tracks_writes_in_its_bitmap(tmp_path: Any) -> None:
    """Found by the simulator (swap_back, takeover): the secondary still showed PAIR while the
    primary had suspended (PSUE: writes in its bitmap, not in the journal). A takeover chose a
    swap, which assumes both sides equal once the journal is restored: the bitmap's writes were
    on the old primary only, and the pair went on in PAIR with P != S. Now the swap is made only
    when the primary was in PAIR when fenced; otherwise the takeover is an SVOL takeover (SSWS)
    and a reverse resync copies what differs."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        disk = s.a.disks[JNL]
        assert isinstance(disk, FlakyDisk)
        disk.armed = True
        await s.write(64)  # the journal write fails: site-a is PSUE, site-b has not heard yet
        await s.write(128)  # tracked in the bitmap only
        assert s.state(s.a) == "PSUE" and s.state(s.b) == "PAIR", s.states()
        await s.b.array.repl.takeover(G, dry_run=False)
        if s.state(s.b) == "SSWS":
            await s.b.array.repl.resync_swap(G, force=True)
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR", 10.0), s.states()
        assert s.group(s.b).role == "primary"
        r = await s.a.array.repl.syncwait(G, None, 5.0)
        assert r["result"] == "DONE", r
        assert s.same(), "PAIR after the swap, but the P-VOL lacks what the old primary had in its bitmap"

    run(tmp_path, body)


def test_pairsyncwait_is_not_done_while_the_primary_is_suspended(tmp_path: Any) -> None:
    """pairsyncwait answered DONE when everything journaled was restored, even with the primary
    suspended (its later writes only in its bitmap, never coming): a script waiting for sync went
    on as if the S-VOL were current. Now it answers BROKEN, as for a suspended secondary."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        disk = s.a.disks[JNL]
        assert isinstance(disk, FlakyDisk)
        disk.armed = True
        await s.write(64)  # the journal write fails: site-a is PSUE, site-b has not heard yet
        assert s.state(s.a) == "PSUE" and s.state(s.b) == "PAIR", s.states()
        r = await s.b.array.repl.syncwait(G, None, 1.0)
        assert r["result"] == "BROKEN", r

    run(tmp_path, body)


def test_paircreate_whose_reply_was_lost_can_be_repeated(tmp_path: Any) -> None:
    """Found by the simulator (delete): the primary set the pair up and journaled its writes, the
    reply was lost; the operator's repeat was refused ("already paired") for good, and entries for
    a P-VOL the secondary had no pair for stopped its restore (KeyError, even at start-up). Now a
    repeat with the same volumes is answered as the first was, and a secondary skips entries of a
    volume it has no pair for (the pair's initial copy brings that volume whole)."""

    async def body(s: Sites, link: EdgeLink) -> None:
        link.lose_reply_of = "repl.prepare_primary"
        with pytest.raises(CommandError):
            await s.create(wait=False)
        assert s.group(s.a) is not None and s.group(s.b) is None, s.states()
        await s.write(0)
        await s.create()
        await s.write(64)
        await s.synced()
        assert s.same()

    run(tmp_path, body)


def test_a_peer_call_during_start_up_is_told_to_wait(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link server serves peers before replication has reopened its journals (start-up may
    take long: a redo, re-journaled extents). A call then failed inside (KeyError: "bad
    parameters: 'g1'", a fence or a status half looked up); now it is answered UNAVAILABLE,
    "starting", which the caller retries like any refusal."""
    from storaged.remote.protocol import Status
    from storaged.repl import primary_role

    gate = asyncio.Event()
    real = primary_role.recover_primary

    async def slow(*a: Any, **kw: Any) -> Any:
        await gate.wait()
        return await real(*a, **kw)

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.synced()
        monkeypatch.setattr(primary_role, "recover_primary", slow)
        old = s.a.array
        s.a.crash()
        boot = asyncio.get_running_loop().create_task(s.a.boot())
        assert await until(lambda: s.a.array is not old and s.a.array.repl.groups.get(G) is not None, 5.0)
        with pytest.raises(RemoteError) as err:
            await s.a.array.repl.handle_call("site-b", "repl.journal_status", {"group": G})
        assert err.value.status == Status.UNAVAILABLE and "starting" in err.value.message, err.value
        gate.set()
        await boot
        st = await s.a.array.repl.handle_call("site-b", "repl.journal_status", {"group": G})
        assert st["group"] == G

    run(tmp_path, body)


def test_a_host_write_in_flight_during_a_reverse_resync_is_durable_or_journaled(tmp_path: Any) -> None:
    """Found by the simulator (takeover, crash_primary): a host write on the SSWS side that was in
    flight when `pairresync --swap` ran landed after the S-VOLs were flushed, neither journaled nor
    in the activity log. The copy back read it; a power cut of the new primary then lost it there,
    and the pair reached PAIR with the old primary holding a write the new one did not. Writes in
    flight are now drained (and new ones held) until the volumes journal."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        s.a.crash()
        await s.b.array.repl.takeover(G, dry_run=False)
        assert s.state(s.b) == "SSWS", s.states()
        await s.a.boot()
        lu = s.b.array.luns[(TARGET, VOL)].lu
        assert lu is not None and not lu.write_protected
        disk = s.b.disks[VOL]
        disk.delay = lambda: 0.2  # the host write below is still in flight when the resync runs
        data = b"".join(struct.pack("<QQ", 999, 57 + i) * (BLOCK // 16) for i in range(4))
        inflight = asyncio.get_running_loop().create_task(lu.store(57 * BLOCK, data, False))
        await asyncio.sleep(0.01)
        await s.b.array.repl.resync_swap(G, force=True)
        disk.delay = lambda: 0.0
        await inflight
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR", 10.0), s.states()
        assert s.a.disks[VOL].cur[57 * BLOCK:61 * BLOCK] == data  # the copy back took it
        disk.keep_prob = 0.0
        s.b.crash()  # power cut of the new primary: what was not durable (nor journaled) is gone
        await s.b.boot()
        await s.a.array.repl.resync(G, False) if s.state(s.a) in ("PSUS", "PSUE") else None
        r = await s.a.array.repl.syncwait(G, None, 10.0)
        assert r["result"] in ("DONE", "BROKEN"), r
        assert s.same() or s.state(s.a) != "PAIR", "PAIR with the old primary holding a write the new one lost"

    run(tmp_path, body)


def test_what_a_copy_reads_from_the_p_vol_is_durable_there(tmp_path: Any) -> None:
    """Found by the simulator (delete, crash_primary): the initial copy read P-VOL data that was
    not durable yet (written before the pair existed, so neither journaled nor in the activity
    log); a power cut of the primary then lost it there while the S-VOL kept it: PAIR, P != S. The
    primary now flushes its P-VOLs when a copy starts (pair creation and resync)."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.write(40)  # before the pair: in the P-VOL's volatile cache only
        await s.create()
        await s.synced()
        assert s.same()
        s.a.disks[VOL].keep_prob = 0.0
        s.a.crash()  # power cut: whatever was not durable on site-a is gone
        await s.a.boot()
        await s.converge()
        assert s.state(s.a) == s.state(s.b) == "PAIR", s.states()
        assert s.same(), "PAIR, but the S-VOL holds a write the P-VOL lost"

    run(tmp_path, body)


def test_a_become_secondary_from_an_older_swap_is_refused(tmp_path: Any) -> None:
    """A repeat of repl.become_secondary that arrives after the roles moved on (the array that
    sent it swapped back meanwhile) must not demote the current primary: swaps carry a term and
    an older one is refused as stale."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.synced()
        sent: list[dict[str, Any]] = []
        real_call = link.call

        async def recording(method: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
            if method == "repl.become_secondary":
                sent.append(dict(params))
            return await real_call(method, params, timeout)

        link.call = recording  # type: ignore[method-assign]
        await s.b.array.repl.takeover(G, dry_run=False)  # swap: site-b primary (term 1)
        assert sent and s.group(s.b).role == "primary" and s.group(s.a).role == "secondary", s.states()
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR"), s.states()
        await s.a.array.repl.takeover(G, dry_run=False)  # and back: site-a primary (term 2)
        assert s.group(s.a).role == "primary" and s.group(s.a).term == 2, s.states()
        with pytest.raises(RemoteError, match="stale"):
            await s.a.array.repl.handle_call("site-b", "repl.become_secondary", sent[0])
        assert s.group(s.a).role == "primary" and s.group(s.b).role == "secondary", s.states()

    run(tmp_path, body)


def test_a_new_primary_restarted_before_the_old_one_was_told_tells_it_then(tmp_path: Any) -> None:
    """The request that demotes the old primary is saved with the new role (one table write), so
    a new primary that crashes before sending it sends it after its restart."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        await s.synced()
        link.drop_request_of = "repl.become_secondary"
        await s.b.array.repl.takeover(G, dry_run=False)
        assert s.group(s.b).demote and s.group(s.a).role == "primary", s.states()
        s.b.crash()  # before any repeat could reach site-a
        await s.b.boot()
        assert s.group(s.b).role == "primary" and s.group(s.b).demote, s.states()
        assert await until(lambda: s.group(s.a).role == "secondary" and not s.group(s.b).demote, 10.0), s.states()
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR", 10.0), s.states()

    run(tmp_path, body)


def test_a_secondary_that_missed_a_resync_after_journal_full_is_held_back_too(tmp_path: Any) -> None:
    """The same as after a journal failure, but the journal filled up (it does not restart at the
    resync): the secondary takes the entries before the resync's start and none after it."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.synced()
        link.gates[JNL] = asyncio.Event()  # the secondary cannot acquire: the journal fills
        i = 0
        while s.state(s.a) != "PSUE":
            await s.write(8 * (i % 100) + 1024)
            i += 1
            assert i < 10_000, "the journal never filled"
        link.gates.pop(JNL).set()  # the secondary takes what is journaled and learns of the PSUE
        assert await until(lambda: s.state(s.b) == "PSUE"), s.states()
        await s.write(0)  # W1: bitmap only
        link.lose_reply_of = "repl.resync"
        with pytest.raises(CommandError):
            await s.b.array.repl.resync(G, False)
        assert s.state(s.a) == "COPY" and s.state(s.b) == "PSUE", s.states()
        assert not s.group(s.a).copy_restarted
        await s.write(512)  # W2: journaled after the resync's start
        disk = s.a.disks[JNL]
        assert isinstance(disk, FlakyDisk)
        disk.armed = True
        await s.write(1536)  # the journal write fails: the primary is PSUE again
        assert await until(lambda: s.state(s.a) == "PSUE"), s.states()
        await asyncio.sleep(2.0)  # the secondary's rounds see PSUE on both sides
        g = s.group(s.b)
        assert g.read_seq <= s.group(s.a).copy_from_seq, (g.read_seq, s.group(s.a).copy_from_seq)
        sv, pv = s.b.disks[VOL].cur, s.a.disks[VOL].cur
        assert sv[0:BLOCK] == pv[0:BLOCK] or sv[512 * BLOCK:513 * BLOCK] != pv[512 * BLOCK:513 * BLOCK], \
            "S-VOL holds W2 without W1"
        await s.converge()
        assert s.state(s.a) == s.state(s.b) == "PAIR", s.states()
        assert s.same()

    run(tmp_path, body, journal=64 << 10)

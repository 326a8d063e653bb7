"""One seed's run: two arrays, a pair group over two volumes, hosts writing, chaos (crashes,
restarts, link faults, operator commands), then quiescence, drain and the final comparisons."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..cmddev.dispatch import CommandError
from .disk import BLOCK, SimDisk
from .hosts import VOLUMES, Hosts
from .node import SimNode
from .world import GROUP, World

if TYPE_CHECKING:
    from ..array.array import Array
    from .plan import Plan

JOURNAL_LUN = 2
CHAOS_TIME = 20.0  # virtual seconds of chaos at most
DRAIN_ROUNDS = 60


class Stop(Exception):
    """A violation was found: end the run."""


class Scenario:
    def __init__(self, world: World, plan: Plan) -> None:
        self.world = world
        self.plan = plan
        self.hosts = Hosts(world, plan)
        self._reboots: list[asyncio.Task[None]] = []
        self._booting: list[asyncio.Task[None]] = []

    # --- set-up ------------------------------------------------------------------------------------

    def build(self) -> None:
        w, p = self.world, self.plan
        for name, peer in (("site-a", "site-b"), ("site-b", "site-a")):
            disks = {lun: SimDisk(f"{name}:{lun}", p.vol_size, w.rng, p.keep_prob, self._disk_delay)
                     for lun in VOLUMES}
            disks[JOURNAL_LUN] = SimDisk(f"{name}:{JOURNAL_LUN}", p.journal_size, w.rng, p.keep_prob,
                                         self._disk_delay)
            w.attach(SimNode(w, name, peer, w.base_dir, disks, interval=0.05, io_timeout=2.0))

    def _disk_delay(self) -> float:
        rng = self.world.rng
        return 0.0 if rng.random() < 0.3 else rng.expovariate(1.0 / self.plan.disk_latency)

    def node(self, name: str) -> SimNode:
        return self.world.nodes[name]

    async def command(self, node: SimNode, what: str,
                      fn: Callable[[Array], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any] | None:
        """An operator command on one array (through its command device, as it were)."""
        if not node.ready:  # command devices are served once repl.start() is done
            self.world.trace(f"op {node.name} {what}: array {'down' if not node.alive else 'starting'}")
            return None
        task = node.spawn(fn(node.array))
        done, _ = await asyncio.wait([task], timeout=300.0)
        if not done:
            self.world.violation("command-hung", f"{what} on {node.name} did not finish in 300s")
            return None
        if task.cancelled():
            self.world.trace(f"op {node.name} {what}: interrupted by a crash")
            return None
        exc = task.exception()
        if exc is not None:
            msg = str(exc) if isinstance(exc, CommandError) else f"{type(exc).__name__}: {exc}"
            self.world.trace(f"op {node.name} {what}: failed: {msg[:160]}")
            if not isinstance(exc, CommandError):
                self.world.count("command_exceptions")
            return None
        result: dict[str, Any] = task.result()
        self.world.trace(f"op {node.name} {what}: {_brief(result)}")
        return result

    def checkpoint(self) -> None:
        self.world.sample()
        self.world.check_prefix()
        if self.world.violations:
            raise Stop()

    async def create_pairs(self, primary: str) -> bool:
        sec = self.node(self.node(primary).peer)
        for vol in VOLUMES:
            params = {"group": GROUP, "peer": primary, "pvol": vol, "svol": vol, "pjnl": JOURNAL_LUN,
                      "sjnl": JOURNAL_LUN}
            if await self.command(sec, f"paircreate lun{vol}",
                                  lambda a, p=params: a.repl.pair_create(p, "sim")) is None:  # type: ignore[misc]
                return False
        return True

    # --- the run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        w = self.world
        self.build()
        for n in w.nodes.values():
            await n.boot()
            w.booted(n)
        w.net.enabled = False  # the pair forms first; a lost paircreate reply is the delete class's
        await self.create_pairs("site-a")
        w.net.enabled = True
        hosts = asyncio.get_running_loop().create_task(self.hosts.run())
        try:
            await self.chaos()
        except Stop:
            pass
        if not w.violations:
            try:
                await self.drain(hosts)
            except Stop:
                pass
        self.hosts.stopping = True
        hosts.cancel()

    async def chaos(self) -> None:
        rng = self.world.rng
        weights = self.plan.weights
        actions = sorted(weights)
        loop = asyncio.get_running_loop()
        while self.hosts.budget > 0 and loop.time() < CHAOS_TIME:
            await asyncio.sleep(rng.expovariate(1.0 / self.plan.action_gap))
            self.checkpoint()
            if not actions:
                continue
            act = rng.choices(actions, [weights[a] for a in actions])[0]
            await getattr(self, f"do_{act}")()
            self.checkpoint()

    # --- chaos actions -------------------------------------------------------------------------------

    def _role(self, role: str) -> SimNode | None:
        for n in self.world.nodes.values():
            g = n.array.repl.groups.get(GROUP) if n.array is not None else None
            if g is not None and g.role == role:
                return n
        return None

    def _crash(self, node: SimNode, downtime: float) -> None:
        if not node.alive:
            return
        self.hosts.crashed(node)
        node.crash()
        self.world.count("crashes")
        self._reboots.append(asyncio.get_running_loop().create_task(self._reboot(node, downtime)))

    async def _reboot(self, node: SimNode, after: float) -> None:
        await asyncio.sleep(after)
        # its own task: the drain cancels reboots still waiting, never a start-up under way (a
        # cancelled repl.start() would leave the array up but never ready)
        boot = asyncio.get_running_loop().create_task(self.boot(node))
        self._booting.append(boot)
        await asyncio.shield(boot)

    async def boot(self, node: SimNode) -> None:
        if node.alive:
            return
        try:
            await node.boot()
        except Exception as exc:  # noqa: BLE001 - a start-up failure is a finding
            self.world.violation("restart-failed", f"{node.name} could not start: {type(exc).__name__}: {exc}")
            return
        self.world.booted(node)

    async def do_crash_primary(self) -> None:
        n = self._role("primary") or self.node(self.hosts.app)
        self._crash(n, self.world.rng.uniform(0.01, 1.0))

    async def do_crash_secondary(self) -> None:
        n = self._role("secondary") or self.node(self.node(self.hosts.app).peer)
        self._crash(n, self.world.rng.uniform(0.01, 1.0))

    async def do_restart(self) -> None:
        n = self.node(self.world.rng.choice(sorted(self.world.nodes)))
        if n.alive:
            self.hosts.crashed(n)
            await n.stop()
            await asyncio.sleep(self.world.rng.uniform(0.0, 0.2))
            await self.boot(n)

    async def do_partition(self) -> None:
        net = self.world.net
        if net.partitioned:
            return
        net.partitioned = True
        net.cut("partition")
        self.world.count("partitions")

        async def heal(after: float) -> None:
            await asyncio.sleep(after)
            net.partitioned = False
            self.world.trace("link healed")

        self._reboots.append(asyncio.get_running_loop().create_task(heal(self.world.rng.uniform(0.05, 2.0))))

    async def do_split(self) -> None:
        rw = self.world.rng.random() < 0.4
        n = self.node(self.world.rng.choice(sorted(self.world.nodes)))
        await self.command(n, f"pairsplit{' -rw' if rw else ''}", lambda a: a.repl.split(GROUP, rw))

    async def do_resync(self) -> None:
        n = self._role("secondary")
        if n is None:
            return
        g = n.array.repl.groups[GROUP]
        force = g.writable or self.world.rng.random() < 0.3
        await self.command(n, f"pairresync{' force' if force else ''}", lambda a: a.repl.resync(GROUP, force))

    async def do_takeover(self) -> None:
        rng, w = self.world.rng, self.world
        sec = self._role("secondary")
        if sec is None:
            return
        primary = sec.peer
        if rng.random() < 0.3:  # the primary site is lost first (the case takeover is for)
            self._crash(self.node(primary), rng.uniform(0.5, 3.0))
        r = await self.command(sec, "takeover", lambda a: a.repl.takeover(GROUP, rng.random() < 0.2))
        if r is None or "state" not in r:
            return
        if r["variant"] == "svol-takeover":
            probe = getattr(sec.array.links.get(primary), "last_probe", "")
            truly_down = not self.node(primary).alive or w.net.partitioned or probe == "link"
            if not r["primary_reachable"] and not truly_down:
                w.violation("takeover-misjudged", f"takeover on {sec.name} treated {primary} as unreachable, but "
                                                  f"it answered the probe ({probe})")
            elif not r["primary_reachable"]:
                w.grant_licence(sec, primary)
        if r.get("role") == "primary" or r.get("state") == "SSWS":
            self.hosts.app = sec.name

    async def do_swap_back(self) -> None:
        n = next((x for x in self.world.nodes.values() if x.alive and (g := x.array.repl.groups.get(GROUP))
                  and g.state == "SSWS"), None)
        if n is None:
            return await self.do_takeover()
        force = self.world.rng.random() < 0.7
        await self.command(n, f"pairresync --swap{' force' if force else ''}",
                           lambda a: a.repl.resync(GROUP, force, swap=True))

    async def do_delete(self) -> None:
        rng = self.world.rng
        have = [n for n in self.world.nodes.values() if n.alive and GROUP in n.array.repl.groups]
        if not have:
            app = self.node(self.hosts.app)
            if app.alive and self.node(app.peer).alive:
                await self.create_pairs(app.name)
            return
        n = rng.choice(have)
        await self.command(n, "pairdelete", lambda a: a.repl.delete(GROUP))

    # --- the end: quiescence, drain, comparison ---------------------------------------------------------

    async def drain(self, hosts: asyncio.Task[None]) -> None:
        w = self.world
        w.trace("--- drain: faults off, hosts stop, arrays up ---")
        w.net.enabled = False
        w.net.partitioned = False
        for t in self._reboots:
            t.cancel()
        await asyncio.gather(*self._booting, return_exceptions=True)
        for n in w.nodes.values():
            await self.boot(n)
        await self.hosts.drain()
        self.checkpoint()
        for _ in range(DRAIN_ROUNDS):
            self.checkpoint()
            if await self._converge_step():
                break
            await asyncio.sleep(0.3)
        else:
            states = {n.name: (g.role, g.state, g.error) if (g := w.group(n)) else "SMPL" for n in w.nodes.values()}
            w.violation("no-convergence", f"the pair did not reach PAIR and drain after the faults ended: {states}")
            raise Stop()
        self.checkpoint()
        self.final_compare()

    async def _converge_step(self) -> bool:
        w = self.world
        a, b = w.nodes["site-a"], w.nodes["site-b"]
        ga, gb = w.group(a), w.group(b)
        if ga is None and gb is None:
            await self.create_pairs(self.hosts.app)
            return False
        if ga is None or gb is None:
            n = a if ga is not None else b
            await self.command(n, "pairdelete (one side only)", lambda x: x.repl.delete(GROUP))
            return False
        if ga.role == gb.role == "primary" and (ga.demote or gb.demote):
            return False  # a swap's last message is still being repeated: the old primary is fenced
        if ga.role == gb.role:
            w.violation("roles-inconsistent", f"both arrays are {ga.role} of {GROUP} ({ga.state}, {gb.state})")
            raise Stop()
        sec = a if ga.role == "secondary" else b
        g = ga if sec is a else gb
        pri, pg = (b, gb) if sec is a else (a, ga)
        if pg.state == "FENCED" and g.state != "SSWS":
            if pg.awaiting_confirm:
                return False  # restarted: the peer's confirmation lifts the fence (it answers now)
            # fenced by a swap that did not complete, with the peer still its secondary: an operator
            # checks that and releases the fence (hostctl pairrelease)
            await self.command(pri, "pairrelease", lambda x: x.repl.release(GROUP))
            return False
        if g.state == "SSWS":
            await self.command(sec, "pairresync --swap force", lambda x: x.repl.resync(GROUP, True, swap=True))
            self.hosts.app = sec.name
        elif g.state in ("PSUS", "PSUE"):
            await self.command(sec, "pairresync force", lambda x: x.repl.resync(GROUP, True))
        elif g.state == "PAIR":
            if pg.state != "PAIR":  # e.g. the primary suspended and the secondary has not heard yet:
                return False        # an operator checks both sides (pairdisplay) before trusting PAIR
            r = await self.command(sec, "pairsyncwait", lambda x: x.repl.syncwait(GROUP, None, 10.0))
            return r is not None and r.get("result") == "DONE"
        return False

    def final_compare(self) -> None:
        w = self.world
        sec = next(n for n in w.nodes.values() if (g := w.group(n)) is not None and g.role == "secondary")
        pri = w.nodes[sec.peer]
        g = w.group(sec)
        assert g is not None
        for p in g.pairs:
            pd, sd = pri.disks[p.pvol], sec.disks[p.svol]
            if pd.cur != sd.cur:
                w.violation("final-p-ne-s", f"after the drain, {pri.name} LUN {p.pvol} != {sec.name} LUN {p.svol}: "
                                            f"{_first_diff(pd, sd)}")
                break
        for vol in VOLUMES:
            w.check_durable(pri, vol, w.ledger(pri.name, vol).since_boot, "acked-write-lost")
        w.trace(f"final: {pri.name} == {sec.name} checked ({len(g.pairs)} pairs)")


def _first_diff(a: SimDisk, b: SimDisk) -> str:
    ta, tb = a.tags(), b.tags()
    diff = [i for i, (x, y) in enumerate(zip(ta, tb, strict=True)) if x != y]
    if not diff:
        return "same tags, other bytes differ"
    i = diff[0]
    return (f"{len(diff)} blocks differ, first block {i}: P holds write {ta[i]}, S holds write {tb[i]}"
            f" (regions {sorted({d * BLOCK >> 20 for d in diff})})")


def _brief(r: dict[str, Any]) -> str:
    keys = ("state", "variant", "primary_reachable", "result", "role", "regions", "copied_regions", "seq",
            "restored_seq", "writable", "via")
    return " ".join(f"{k}={r[k]}" for k in keys if k in r) or "ok"

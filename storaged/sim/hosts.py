"""Hosts: several initiators at queue depth >= 4 each, writing tagged blocks over both volumes of
the group (overlapping LBAs), with some FUA writes and SYNCHRONIZE CACHE.

A host request runs on the array as that array's work (a crash ends it); the host only sees the
answer. Every write is recorded in the world before it is sent.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .disk import BLOCK
from .model import HostWrite
from .node import TARGET
from .world import HOST_WRITE

if TYPE_CHECKING:
    from ..array.array import Array
    from .node import SimNode
    from .plan import Plan
    from .world import World

VOLUMES = (0, 1)
HUNG = 120.0  # virtual seconds: a host request not answered by then is a liveness failure


class Hosts:
    def __init__(self, world: World, plan: Plan) -> None:
        self.world = world
        self.plan = plan
        self.app = "site-a"  # where the application runs (and writes)
        self.budget = plan.writes
        self.stopping = False
        self.inflight: dict[str, set[HostWrite]] = {}
        self._ops: set[asyncio.Task[None]] = set()
        self._next_tag = 1

    def crashed(self, node: SimNode) -> None:
        """The array went down: its requests in flight end unanswered, now."""
        for w in sorted(self.inflight.pop(node.name, set()), key=lambda w: w.tag):
            w.end = self.world.tick()

    async def run(self) -> None:
        await asyncio.gather(*(self._host(i) for i in range(self.plan.hosts)))

    async def drain(self) -> None:
        self.stopping = True
        while self._ops:
            await asyncio.wait(list(self._ops))

    async def _host(self, i: int) -> None:
        """Bursts of up to twice the queue depth, then a pause: the writes of a run spread over
        ``plan.duration`` virtual seconds and still reach the queue depth often."""
        rng, plan = self.world.rng, self.plan
        sem = asyncio.Semaphore(plan.queue_depth)
        bursts = max(1.0, plan.writes / plan.hosts / plan.queue_depth)
        while not self.stopping and self.budget > 0:
            for _ in range(rng.randint(1, 2 * plan.queue_depth)):
                await sem.acquire()
                if self.stopping:
                    sem.release()
                    return
                op = asyncio.get_running_loop().create_task(self._one(i, sem))
                self._ops.add(op)
                op.add_done_callback(self._ops.discard)
                await asyncio.sleep(rng.expovariate(20000.0))
            await asyncio.sleep(rng.expovariate(bursts / plan.duration))

    async def _one(self, host: int, sem: asyncio.Semaphore) -> None:
        try:
            rng, plan, world = self.world.rng, self.plan, self.world
            while "copy_writes" not in plan.active and world.in_copy() and not self.stopping:
                await asyncio.sleep(0.01)  # the application waits for the pair (no fuzzy copy)
            site = self.app
            if rng.random() < plan.stray_prob:
                site = world.nodes[site].peer
            node = world.nodes[site]
            vol = rng.choice(VOLUMES)
            if rng.random() < plan.flush_prob:
                await self._flush(node, vol, host)
                return
            self.budget -= 1
            nblocks = rng.choice((1, 1, 2, 3, 4, 8, 16))
            span = plan.vol_size // BLOCK
            if rng.random() < 0.5:  # a hot spot, so writes overlap often
                block = rng.randrange(0, 64)
            else:
                block = rng.randrange(0, span - nblocks)
            w = HostWrite(self._next_tag, site, vol, block, nblocks, rng.random() < plan.fua_prob, 0)
            self._next_tag += 1
            await self._write(node, w, host)
        finally:
            sem.release()

    async def _request(self, node: SimNode, what: str, run: object) -> tuple[bool, str]:
        if not node.ready:  # down, or still starting (the portal opens after repl.start())
            return False, "array down" if not node.alive else "array starting"
        task = node.spawn(run)  # type: ignore[arg-type]
        done, _ = await asyncio.wait([task], timeout=HUNG)
        if not done:
            self.world.violation("host-io-hung", f"{what} on {node.name} unanswered after {HUNG:g}s")
            return False, "hung"
        if task.cancelled():
            return False, "array crashed"
        exc = task.exception()
        return (True, "") if exc is None else (False, f"{type(exc).__name__}: {exc}")

    async def _write(self, node: SimNode, w: HostWrite, host: int) -> None:
        world = self.world
        w.submit = world.tick()
        world.writes[w.tag] = w
        data = w.payload(world.node_ids[node.name])

        async def run(array: Array) -> None:
            HOST_WRITE.set(w)
            lu = array.luns[(TARGET, w.vol)].lu
            assert lu is not None
            if lu.write_protected:
                raise PermissionError("DATA PROTECT: write protected")
            w.admitted_as_svol = world.protected_svol(node.name, w.vol)  # what acked() judges
            await lu.store(w.block * BLOCK, data, w.fua)
            late = world.protected_svol(node.name, w.vol)
            if w.admitted_as_svol is None and late is not None:
                # admitted while writable, done only once the volume was a protected S-VOL: the array
                # must wait for such writes before it calls the volume an S-VOL (or copies to it)
                world.violation("write-landed-on-svol", f"{node.name} write {w.tag} to LUN {w.vol} landed after "
                                                        f"the volume became an S-VOL in {late}")

        self.inflight.setdefault(node.name, set()).add(w)
        ok, why = await self._request(node, f"write {w.tag}", run(node.array) if node.ready else None)
        if w in self.inflight.get(node.name, set()):
            self.inflight[node.name].discard(w)
            w.end = world.tick()
        w.acked = ok
        world.count("writes_acked" if ok else "writes_failed")
        world.trace(f"h{host} {node.name} W{w.tag} lun{w.vol} {w.block}+{w.nblocks}{' FUA' if w.fua else ''}: "
                    f"{'ok' if ok else why}")
        if ok:
            world.acked(w)

    async def _flush(self, node: SimNode, vol: int, host: int) -> None:
        world = self.world
        issued = world.tick()

        async def run(array: Array) -> None:
            lu = array.luns[(TARGET, vol)].lu
            assert lu is not None
            await lu.backstore.flush()

        gen = node.gen
        ok, why = await self._request(node, "flush", run(node.array) if node.ready else None)
        world.trace(f"h{host} {node.name} SYNC lun{vol}: {'ok' if ok else why}")
        if ok and node.gen == gen:
            world.ledger(node.name, vol).flushed(issued)

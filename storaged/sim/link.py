"""The simulated remote link: the API ``PeerLink`` gives the replication code, served by the peer
array's real handlers (``Array.call``, ``Array.volume``) in the peer's own tasks.

Faults, each drawn by the run's RNG: latency and spikes past the I/O timeout (LinkTimeout),
requests dropped before the peer sees them (LinkDown), replies lost after the peer acted
(LinkDown or LinkTimeout to the caller while the peer's change stands), stray duplicate executions
of read-only requests, and partitions (every in-flight request fails, new ones fail at once).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backstore.base import Extent
from ..remote.api import LinkDown, LinkTimeout, RemoteError, VolumeInfo
from ..remote.protocol import Status, status_for_exception

if TYPE_CHECKING:
    from ..array.array import Array
    from .node import SimNode
    from .world import World

READ_ONLY_CALLS = ("repl.journal_status", "repl.lost_writes")


@dataclass
class NetFaults:
    latency: float = 0.0005  # mean one-way delay, seconds
    spike_prob: float = 0.0  # a delay past the caller's timeout
    drop_prob: float = 0.0
    lost_reply_prob: float = 0.0
    dup_prob: float = 0.0


class SimNet:
    """The one connection between the two arrays: up or cut, with an epoch per connection."""

    def __init__(self, world: World, faults: NetFaults) -> None:
        self.world = world
        self.faults = faults
        self.enabled = True
        self.partitioned = False
        self.epoch = 0
        self._lost: asyncio.Future[None] | None = None

    def lost(self) -> asyncio.Future[None]:
        if self._lost is None or self._lost.done():
            self._lost = asyncio.get_running_loop().create_future()
        return self._lost

    def cut(self, why: str) -> None:
        """The connection drops: every request in flight on it fails with LinkDown."""
        self.epoch += 1
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._lost = None
        self.world.trace(f"link cut: {why}")

    def up(self, a: str, b: str) -> bool:
        nodes = self.world.nodes
        return not self.partitioned and nodes[a].alive and nodes[b].alive

    def chance(self, p: float) -> bool:
        return self.enabled and p > 0 and self.world.rng.random() < p

    def delay(self) -> float:
        f = self.faults
        return self.world.rng.expovariate(1.0 / f.latency) if f.latency > 0 else 0.0


class SimLink:
    """What ``array.links[peer]`` holds in a simulation (in place of a PeerLink)."""

    def __init__(self, net: SimNet, src: SimNode, dst: str, io_timeout: float) -> None:
        self.net = net
        self.src = src
        self.dst = dst
        self.peer_name = dst
        self.io_timeout = io_timeout
        #: outcome of the latest repl.journal_status call: "ok", "remote" (the peer answered an
        #: error) or "link" (no answer); the takeover check reads it
        self.last_probe = ""

    @property
    def connected(self) -> bool:
        return self.net.up(self.src.name, self.dst)

    def status(self) -> dict[str, Any]:
        return {"peer": self.dst, "state": "up" if self.connected else "down"}

    def add_listener(self, callback: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def _exchange(self, what: str, run: Callable[[Array], Coroutine[Any, Any, Any]],
                        timeout: float | None, read_only: bool) -> Any:
        net, world = self.net, self.net.world
        loop = asyncio.get_running_loop()
        if not self.connected:
            raise LinkDown(f"link to {self.dst} is down")
        epoch = net.epoch
        lost = net.lost()
        limit = self.io_timeout if timeout is None else timeout
        deadline = loop.time() + limit

        async def timed_out() -> Any:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            raise LinkTimeout(f"{what} to {self.dst}: no answer within {limit:g}s")

        if net.chance(net.faults.spike_prob):
            world.trace(f"{self.src.name}->{self.dst} {what}: stalled")
            await asyncio.wait([lost], timeout=limit)
            if lost.done():
                raise LinkDown(f"link to {self.dst} dropped with {what} in flight")
            raise LinkTimeout(f"{what} to {self.dst}: no answer within {limit:g}s")
        await asyncio.sleep(net.delay())
        if net.epoch != epoch or not self.connected:
            raise LinkDown(f"link to {self.dst} dropped with {what} in flight")
        if net.chance(net.faults.drop_prob):
            world.trace(f"{self.src.name}->{self.dst} {what}: dropped before the peer saw it")
            net.cut("request dropped")
            raise LinkDown(f"link to {self.dst} dropped with {what} in flight")
        peer = world.nodes[self.dst]
        task = peer.spawn(run(peer.array))
        if read_only and net.chance(net.faults.dup_prob):
            peer.spawn(run(peer.array))  # a stray second execution; its answer goes nowhere
        left = deadline - loop.time()
        done, _ = await asyncio.wait([task, lost], timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            if lost.done() or net.epoch != epoch:
                raise LinkDown(f"link to {self.dst} dropped with {what} in flight")
            raise LinkTimeout(f"{what} to {self.dst}: no answer within {limit:g}s")
        if task.cancelled():
            raise LinkDown(f"{self.dst} went away with {what} in flight")
        exc = task.exception()
        await asyncio.sleep(net.delay())
        if net.epoch != epoch or not self.connected:
            raise LinkDown(f"link to {self.dst} dropped before the answer to {what} arrived")
        if net.chance(net.faults.lost_reply_prob):
            world.trace(f"{self.src.name}->{self.dst} {what}: reply lost after the peer acted"
                        f" ({'error' if exc else 'ok'})")
            if world.rng.random() < 0.5:
                net.cut("reply lost")
                raise LinkDown(f"link to {self.dst} dropped before the answer to {what} arrived")
            return await timed_out()
        if exc is not None:
            if isinstance(exc, RemoteError):
                raise RemoteError(exc.status, exc.message)
            status = status_for_exception(exc)
            raise RemoteError(status, (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:1024])
        return task.result()

    async def call(self, method: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        body = json.loads(json.dumps(params))  # what the wire does to tuples and int keys

        async def run(array: Array) -> Any:
            return json.loads(json.dumps(await array.call(self.src.name, method, body)))

        probe = method == "repl.journal_status"
        try:
            result: dict[str, Any] = await self._exchange(method, run, timeout, method in READ_ONLY_CALLS)
        except RemoteError:
            if probe:
                self.last_probe = "remote"
            raise
        except (LinkDown, LinkTimeout):
            if probe:
                self.last_probe = "link"
            raise
        if probe:
            self.last_probe = "ok"
        return result

    def _volume(self, array: Array, target: str, lun: int, offset: int, length: int) -> Any:
        vol = array.volume(self.src.name, target, lun)
        if vol is None:
            raise RemoteError(Status.NOT_FOUND, f"no volume {target!r} LUN {lun}")
        if offset + length > vol.info.size:
            raise RemoteError(Status.BAD_REQUEST, f"range {offset}+{length} beyond the end of the volume")
        return vol

    async def read(self, target: str, lun: int, offset: int, length: int, origin: str | None = None) -> bytes:
        world = self.net.world

        async def run(array: Array) -> bytes:
            world.reading_pvol(self.dst, lun)
            data: bytes = await self._volume(array, target, lun, offset, length).read(offset, length)
            world.served_read(self.dst, lun)
            return data

        return await self._exchange(f"READ {lun}@{offset}+{length}", run, None, True)

    async def extents(self, target: str, lun: int, offset: int, length: int,
                      origin: str | None = None) -> list[Extent]:
        async def run(array: Array) -> list[Extent]:
            return await self._volume(array, target, lun, offset, length).extents(offset, length)

        return await self._exchange(f"EXTENTS {lun}", run, None, True)

    async def write(self, target: str, lun: int, offset: int, data: bytes | bytearray | memoryview,
                    fua: bool = False, origin: str | None = None) -> None:
        payload = bytes(data)

        async def run(array: Array) -> None:
            await self._volume(array, target, lun, offset, len(payload)).write(offset, payload, fua)

        await self._exchange(f"WRITE {lun}", run, None, False)

    async def flush(self, target: str, lun: int, origin: str | None = None) -> None:
        async def run(array: Array) -> None:
            await self._volume(array, target, lun, 0, 0).flush()

        await self._exchange(f"FLUSH {lun}", run, None, False)

    async def open_volume(self, target: str, lun: int) -> VolumeInfo:
        async def run(array: Array) -> VolumeInfo:
            return self._volume(array, target, lun, 0, 0).info

        return await self._exchange("OPEN_VOLUME", run, None, True)

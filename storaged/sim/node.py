"""One simulated array site: its disks (which survive crashes), its table directory, and the
current ``Array`` incarnation built from the real code.

Seams used (the code under test is not changed): ``Array._local_store`` is replaced on the
instance so ``open_luns`` builds the LUNs on simulated disks; ``array.links[peer]`` holds a
:class:`SimLink`; replication starts with ``array.repl.start()`` (no iSCSI portal, no sockets).
Each incarnation works in its own copy of the data directory, so a crashed incarnation's leftover
work can never write the next one's tables.
"""

from __future__ import annotations

import asyncio
import contextvars
import shutil
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..array.array import Array
from ..config import (
    ArrayConfig,
    IscsiConfig,
    LunConfig,
    PeerConfig,
    RemoteConfig,
    ReplicationConfig,
    TargetConfig,
)
from .disk import DiskHandle, SimDisk
from .link import SimLink
from .loop import NODE

if TYPE_CHECKING:
    from .world import World

TARGET = "iqn.2027-01.io.storaged.sim:t0"


class SimNode:
    def __init__(self, world: World, name: str, peer: str, base_dir: str, disks: dict[int, SimDisk],
                 interval: float, io_timeout: float) -> None:
        self.world = world
        self.name = name
        self.peer = peer
        self.base_dir = base_dir
        self.disks = disks
        self.interval = interval
        self.io_timeout = io_timeout
        self.gen = 0
        self.alive = False
        self.ready = False  # booted and its table loaded: its states are watched
        self.array: Array = None  # type: ignore[assignment]
        self._tasks: list[asyncio.Task[Any]] = []
        self._ctx: contextvars.Context | None = None

    def data_dir(self, gen: int) -> str:
        return f"{self.base_dir}/{self.name}.{gen}"

    def config(self, data_dir: str) -> ArrayConfig:
        luns = tuple(LunConfig(lun=lun, file=f"lun{lun}.img", size=d.size, thin=True)
                     for lun, d in sorted(self.disks.items()))
        return ArrayConfig(
            name=self.name, data_dir=data_dir, iscsi=IscsiConfig(), targets=(TargetConfig(TARGET, luns),),
            remote=RemoteConfig(peers=(PeerConfig(self.peer, "sim:0", "sim-secret"),), io_timeout=self.io_timeout),
            replication=ReplicationConfig(interval=self.interval))

    # --- tasks of this incarnation -----------------------------------------------------------

    def adopt(self, task: asyncio.Task[Any]) -> None:
        if len(self._tasks) > 512:
            self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as work of this array incarnation (ended by a crash)."""
        if not self.alive or self._ctx is None:
            coro.close()
            raise RuntimeError(f"{self.name} is down")
        return asyncio.get_running_loop().create_task(coro, context=self._ctx.copy())

    # --- lifecycle -----------------------------------------------------------------------------

    async def boot(self) -> None:
        """Build a new Array from the config and the surviving disks, and start replication."""
        prev = self.data_dir(self.gen)
        self.gen += 1
        ddir = self.data_dir(self.gen)
        shutil.copytree(prev, ddir) if self.gen > 1 else None
        array = Array(self.config(ddir))
        array._local_store = lambda lcfg: DiskHandle(self.disks[lcfg.lun])  # type: ignore[method-assign]
        array.open_luns()
        array.links[self.peer] = SimLink(self.world.net, self, self.peer, self.io_timeout)  # type: ignore[assignment]
        self.array = array
        self._ctx = contextvars.copy_context()
        self._ctx.run(NODE.set, self)
        self.alive = True
        self._tasks = []
        self.world.trace(f"{self.name}: boot #{self.gen}")
        await self.spawn(array.repl.start())

    def crash(self) -> None:
        """Power cut: every task of this incarnation ends, unsynced disk writes are lost or torn."""
        if not self.alive:
            return
        self.alive = self.ready = False
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        summary = []
        for lun, d in sorted(self.disks.items()):
            kept, lost = d.crash()
            summary.append(f"lun{lun} kept {kept} lost {lost}")
        self.world.net.cut(f"{self.name} crashed")
        self.world.trace(f"{self.name}: CRASH ({', '.join(summary)})")

    async def stop(self) -> None:
        """A clean shutdown (the daemon's stop path for replication and stores)."""
        if not self.alive:
            return
        self.world.trace(f"{self.name}: clean stop")
        task = self.spawn(self.array.repl.stop())
        await asyncio.wait([task])
        self.alive = self.ready = False
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        self.array.close_stores()
        for d in self.disks.values():
            d.gen += 1  # this incarnation's handles are closed
        self.world.net.cut(f"{self.name} stopped")

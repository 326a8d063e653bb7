"""What every part of the replication manager shares: the table, locks, LUN and link access."""

from __future__ import annotations

import asyncio
import threading
import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..backstore.base import Backstore
from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..persist import atomic_write_json, read_json
from ..remote.api import LinkError, RemoteError
from ..remote.protocol import Status
from .journal import (
    PrimaryJournal,
    Superblock,
)
from .model import Group, Pair
from .primary import JournaledStore, WriteOrder
from .tracked import TrackedStore

if TYPE_CHECKING:
    from ..remote.link import PeerLink
    from ..array.array import Array
    from ..scsi.lu import LogicalUnit

log = logging.getLogger("storaged.repl")


class ReplicationCore:
    def __init__(self, array: Array) -> None:
        self.array = array
        self.cfg = array.cfg.replication
        self.interval = self.cfg.interval
        self.path = os.path.join(array.cfg.data_dir, "replication.json")
        self.groups: dict[str, Group] = {}
        self._table_lock = threading.Lock()
        self._table_version = self._table_written = 0
        self.journals: dict[str, PrimaryJournal] = {}
        self.orders: dict[str, WriteOrder] = {}
        self.secondary_journal: dict[str, Superblock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: start() is done (journals reopened): peers' calls are served only from then on
        self.started = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._progress = asyncio.Event()
        self._last_primary: dict[str, dict[str, Any]] = {}
        #: the secondary's in-progress pointers of Fig. 15 (to-be-read, to-be-restored); the
        #: completed ones are persisted in the group, these only live while an operation runs
        self._to_be_read: dict[str, int] = {}
        self._to_be_restored: dict[str, int] = {}
        #: regions a resync must copy, per group and P-VOL (held until the copy is done)

    # --- persistence ---------------------------------------------------------------------------

    def save(self) -> None:
        """Persist the table now (atomic: temp file, fsync, rename, fsync of the directory)."""
        self._write_table(self._snapshot())

    async def save_async(self) -> None:
        """Persist the table from a worker thread, for callers on the I/O path. Snapshots are
        numbered on the event loop and written in a thread under one lock, so an older snapshot
        never lands after a newer one."""
        await asyncio.to_thread(self._write_table, self._snapshot())

    def _snapshot(self) -> tuple[int, dict[str, Any]]:
        self._table_version += 1
        return self._table_version, {"groups": {name: asdict(g) for name, g in self.groups.items()}}

    def _write_table(self, snap: tuple[int, dict[str, Any]]) -> None:
        version, data = snap
        with self._table_lock:
            if version < self._table_written:
                return  # a newer table is already on disk
            atomic_write_json(self.path, data)
            self._table_written = version

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        data = read_json(self.path)
        for name, raw in data.get("groups", {}).items():
            pairs = [Pair(**p) for p in raw.pop("pairs", [])]
            self.groups[name] = Group(pairs=pairs, **raw)

    def lock(self, group: str) -> asyncio.Lock:
        return self._locks.setdefault(group, asyncio.Lock())

    # --- LUN access ----------------------------------------------------------------------------

    def _tname(self, target: str) -> str:
        """A group's target on this array ("" = the first, as tables written before targets were
        recorded assume)."""
        return target or self.array.cfg.targets[0].name

    def _lu(self, lun: int, what: str, target: str = "") -> LogicalUnit:
        tname = self._tname(target)
        rec = self.array.luns.get((tname, lun))
        if rec is None or rec.lu is None:
            raise CommandError(ResultStatus.BAD_PARAMETER,
                               f"{what}: LUN {lun} of target {tname} does not exist on {self.array.name}")
        if rec.cfg.kind != "data":
            raise CommandError(ResultStatus.BAD_PARAMETER, f"{what}: LUN {lun} is a {rec.cfg.kind}, not a data LUN")
        return rec.lu

    def _used_luns(self) -> dict[tuple[str, int], str]:
        """(target, LUN) of every volume and journal a group uses on this array -> the group."""
        used: dict[tuple[str, int], str] = {}
        for g in self.groups.values():
            t = self._tname(g.target)
            used[(t, g.pjnl if g.role == "primary" else g.sjnl)] = g.name
            for p in g.pairs:
                used[(t, p.pvol if g.role == "primary" else p.svol)] = g.name
        return used

    def link_access(self, peer: str, target: str, lun: int) -> str:
        """Why ``peer`` may not use this LUN over the remote link ("" = it may): the volumes and
        journals of a group are served to that group's peer only."""
        name = self._used_luns().get((self._tname(target), lun))
        if name is None:
            return ""
        g = self.groups.get(name)
        if g is not None and g.peer != peer:
            return f"LUN {lun} belongs to group {name}, paired with {g.peer}"
        return ""

    @staticmethod
    def _inner(lu: LogicalUnit) -> Backstore:
        store = lu.backstore
        return store.inner if isinstance(store, (JournaledStore, TrackedStore)) else store

    def _link(self, group: Group) -> PeerLink:
        link = self.array.links.get(group.peer)
        if link is None:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"{group.peer} is not a peer of {self.array.name}")
        return link

    async def _call(self, group: Group, method: str, params: dict[str, Any], timeout: float | None = None) -> dict:
        try:
            return await self._link(group).call(method, params, timeout=timeout)
        except RemoteError as exc:
            status = ResultStatus.WRONG_STATE if exc.status == Status.WRONG_STATE else ResultStatus.FAILED
            raise CommandError(status, f"{group.peer}: {exc.message}") from None
        except LinkError as exc:
            raise CommandError(ResultStatus.UNREACHABLE, f"{group.peer} is unreachable: {exc}") from None


    def _group(self, name: str) -> Group:
        g = self.groups.get(name)
        if g is None:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"no group {name} on {self.array.name} (SMPL)")
        return g


"""Journal groups and pairs of one array (spec Fig. 10-16): the pair management table, pair
formation with the initial copy, journal acquisition, restore, purge, status, split, resync, delete.

The secondary array drives replication (it pulls, as the spec's read request section does): it
asks the primary to start journaling, copies the P-VOLs over the remote link (skipping holes),
then repeatedly reads the primary journal's new ring bytes into its own journal, restores them in
sequence order to the S-VOLs and lets the primary purge what it has taken. The host can run the
same steps one by one through command devices (``hostctl replicate``); the secondary also runs
them by itself every ``interval`` seconds. See ``docs/replication.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..backstore.base import Backstore
from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..persist import atomic_write_json, read_json
from ..remote.api import LinkError, RemoteError
from ..remote.protocol import Status
from .journal import (
    HEAD_LBA_BYTES,
    JournalCorrupt,
    PrimaryJournal,
    Superblock,
    decode_header,
    encode_superblock,
    read_entries,
)
from .primary import REGION, JournaledStore, WriteOrder

if TYPE_CHECKING:
    from ..array.array import Array
    from ..scsi.lu import LogicalUnit

log = logging.getLogger("storaged.repl")

COPY_CHUNK = 4 << 20
COPY_PARALLEL = 6
ACQUIRE_CHUNK = 4 << 20
RESTORE_BATCH = 64 << 20


@dataclass
class Pair:
    pvol: int
    svol: int
    state: str = "COPY"
    size: int = 0
    copied: int = 0

    @property
    def copy_percent(self) -> float:
        return 100.0 if self.state not in ("COPY",) else round(100.0 * self.copied / self.size, 1) if self.size else 0.0


@dataclass
class Group:
    """One row set of the pair management table (Fig. 10) plus the journal pointers (Fig. 15)."""

    name: str
    role: str  # "primary" or "secondary"
    peer: str  # the other array
    pjnl: int
    sjnl: int
    pairs: list[Pair] = field(default_factory=list)
    state: str = "COPY"
    error: str = ""
    # primary: journal-out (persisted on purge); journal-in is found by scanning
    out_pos: int = 0
    out_seq: int = 1
    dirty: dict[str, list[int]] = field(default_factory=dict)  # volume -> regions written while suspended
    # secondary: the four pointers of Fig. 15, as (position, next sequence number)
    epoch: int = 0
    head: int = 0
    end: int = 0
    block_size: int = 512
    restored_pos: int = 0
    restored_seq: int = 1
    read_pos: int = 0
    read_seq: int = 1
    restored_time_ns: int = 0
    writable: bool = False  # S-VOL writable (split -rw, takeover)
    fenced: bool = False  # primary: P-VOLs read-only because the peer took over

    def pvols(self) -> list[int]:
        return [p.pvol for p in self.pairs]

    def svol_of(self, pvol: int) -> int:
        for p in self.pairs:
            if p.pvol == pvol:
                return p.svol
        raise KeyError(pvol)

    def set_state(self, state: str, error: str = "") -> None:
        self.state = state
        self.error = error
        for p in self.pairs:
            if not (state == "COPY" and p.state == "PAIR"):
                p.state = state


def _wrong_state(group: Group, what: str, allowed: tuple[str, ...]) -> CommandError:
    return CommandError(ResultStatus.WRONG_STATE,
                        f"group {group.name} is in {group.state}; {what} needs {' or '.join(allowed)}")


class Replication:
    def __init__(self, array: Array) -> None:
        self.array = array
        self.cfg = array.cfg.replication
        self.interval = self.cfg.interval
        self.path = os.path.join(array.cfg.data_dir, "replication.json")
        self.groups: dict[str, Group] = {}
        self.journals: dict[str, PrimaryJournal] = {}
        self.orders: dict[str, WriteOrder] = {}
        self.secondary_journal: dict[str, Superblock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._progress = asyncio.Event()
        self._last_primary: dict[str, dict[str, Any]] = {}
        #: the secondary's in-progress pointers of Fig. 15 (to-be-read, to-be-restored); the
        #: completed ones are persisted in the group, these only live while an operation runs
        self._to_be_read: dict[str, int] = {}
        self._to_be_restored: dict[str, int] = {}
        #: regions a resync must copy, per group and P-VOL (held until the copy is done)
        self._resync_regions: dict[str, dict[int, list[tuple[int, int]]]] = {}

    # --- persistence ---------------------------------------------------------------------------

    def save(self) -> None:
        data = {"groups": {name: asdict(g) for name, g in self.groups.items()}}
        atomic_write_json(self.path, data)

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

    def _lu(self, lun: int, what: str) -> LogicalUnit:
        tname = self.array.cfg.targets[0].name
        rec = self.array.luns.get((tname, lun))
        if rec is None or rec.lu is None:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"{what}: LUN {lun} does not exist on {self.array.name}")
        if rec.cfg.kind != "data":
            raise CommandError(ResultStatus.BAD_PARAMETER, f"{what}: LUN {lun} is a {rec.cfg.kind}, not a data LUN")
        return rec.lu

    def _used_luns(self) -> set[int]:
        used: set[int] = set()
        for g in self.groups.values():
            used |= {g.pjnl if g.role == "primary" else g.sjnl}
            used |= {p.pvol if g.role == "primary" else p.svol for p in g.pairs}
        return used

    @staticmethod
    def _inner(lu: LogicalUnit) -> Backstore:
        store = lu.backstore
        return store.inner if isinstance(store, (JournaledStore, _TrackedStore)) else store

    def _link(self, group: Group):  # type: ignore[no-untyped-def]
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

    # --- start-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload the table after a restart: reopen primary journals (redoing their tail on the
        P-VOLs), protect S-VOLs, and resume the secondary's work."""
        self._load()
        for g in self.groups.values():
            if g.role == "primary":
                await self._attach_primary(g, reopen=True)
            else:
                self.secondary_journal[g.name] = Superblock(g.name, g.block_size, g.head, g.end, g.epoch)
                self._protect(g)
                if g.state == "SSWS":
                    self._track_writes(g)
                self._spawn(g)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._tasks.clear()

    # --- primary side ----------------------------------------------------------------------------

    async def _attach_primary(self, g: Group, reopen: bool) -> None:
        jstore = self._inner(self._lu(g.pjnl, "primary journal"))
        if reopen:
            journal, tail = await PrimaryJournal.open(jstore, g.name, g.out_pos, g.out_seq)
            for e in tail:  # redo: a crash may have come between the journal and the volume write
                store = self._inner(self._lu(e.volume, "P-VOL"))
                if e.zero_length:
                    await store.write_zeroes(e.offset, e.zero_length)
                else:
                    await store.write(e.offset, e.data)
            if tail:
                log.info("group %s: journal reopened, %d entries after journal-out redone on the P-VOLs", g.name, len(tail))
        else:
            journal = await PrimaryJournal.format(jstore, g.name, self._lu(g.pjnl, "primary journal").block_size)
            g.out_pos, g.out_seq = journal.ptr.out_pos, journal.ptr.out_seq
        self.journals[g.name] = journal
        order = WriteOrder(journal, lambda why, g=g: self._journal_full(g, why),
                           lambda vol, regions, g=g: self._dirty(g, vol, regions),
                           delay_limit=self.cfg.delay_limit if self.cfg.journal_full == "delay" else 0.0)
        order.journaling = g.state in ("COPY", "PAIR")
        order.dirty = {int(k): set(v) for k, v in g.dirty.items()}
        self.orders[g.name] = order
        for p in g.pairs:
            self._wrap(order, p.pvol)
            if g.fenced:
                self._lu(p.pvol, "P-VOL").write_protected = True

    def _wrap(self, order: WriteOrder, pvol: int) -> None:
        lu = self._lu(pvol, "P-VOL")
        if not isinstance(lu.backstore, JournaledStore):
            lu.backstore = JournaledStore(lu.backstore, order, pvol)

    def _unwrap(self, pvol: int) -> None:
        lu = self._lu(pvol, "P-VOL")
        if isinstance(lu.backstore, JournaledStore):
            lu.backstore = lu.backstore.inner

    def _journal_full(self, g: Group, why: str) -> None:
        log.error("group %s: %s; pairs suspended (PSUE), changes tracked in a bitmap", g.name, why)
        g.set_state("PSUE", why)
        self.save()

    def _dirty(self, g: Group, volume: int, regions: set[int]) -> None:
        g.dirty.setdefault(str(volume), [])
        g.dirty[str(volume)] = sorted(set(g.dirty[str(volume)]) | regions)
        self.save()

    async def prepare_primary(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        name, pvol, pjnl = str(params["group"]), int(params["pvol"]), int(params["pjnl"])
        sjnl, svol = int(params["sjnl"]), int(params["svol"])
        async with self.lock(name):
            g = self.groups.get(name)
            lu = self._lu(pvol, "P-VOL")
            if g is None:
                if pvol in self._used_luns() or pjnl in self._used_luns() or pvol == pjnl:
                    raise RemoteError(Status.BAD_REQUEST, f"LUN {pvol} or {pjnl} is already used by a group")
                g = Group(name, "primary", peer, pjnl, sjnl, [Pair(pvol, svol, "COPY", lu.num_blocks * lu.block_size)])
                await self._attach_primary(g, reopen=False)
                self.groups[name] = g
            else:
                if g.role != "primary" or g.peer != peer or g.pjnl != pjnl:
                    raise RemoteError(Status.BAD_REQUEST, f"group {name} exists with other roles or journals")
                if pvol in g.pvols() or pvol in self._used_luns():
                    raise RemoteError(Status.BAD_REQUEST, f"LUN {pvol} is already paired")
                g.pairs.append(Pair(pvol, svol, "COPY", lu.num_blocks * lu.block_size))
                self._wrap(self.orders[name], pvol)
            g.set_state("COPY")
            self.orders[name].journaling = True
            self.save()
            j = self.journals[name]
            return {"epoch": j.sb.epoch, "head": j.sb.head, "end": j.sb.end, "block_size": j.sb.block_size,
                    "in_pos": j.ptr.in_pos, "next_seq": j.ptr.next_seq, "size": lu.num_blocks * lu.block_size}

    def _primary(self, name: str) -> Group:
        g = self.groups.get(name)
        if g is None or g.role != "primary":
            raise RemoteError(Status.NOT_FOUND, f"no primary group {name} on {self.array.name}")
        return g

    async def primary_status(self, name: str, at_pos: int | None = None) -> dict[str, Any]:
        g = self._primary(name)
        j = self.journals[name]
        st = dict(j.status())
        st.update({"group": name, "state": g.state, "error": g.error, "now_ns": time.time_ns(), "role": "primary"})
        if at_pos is not None and at_pos != j.committed_pos:
            hdr = decode_header(await j.store.read(at_pos, HEAD_LBA_BYTES))
            st["time_at_pos_ns"] = hdr.time_ns if hdr is not None and not (hdr.flags & 1) else st["oldest_time_ns"]
        return st

    async def purge(self, name: str, upto_pos: int, upto_seq: int) -> dict[str, Any]:
        g = self._primary(name)
        j = self.journals[name]
        async with self.orders[name].lock:
            await j.purge(upto_pos, upto_seq)
        g.out_pos, g.out_seq = j.ptr.out_pos, j.ptr.out_seq
        self.save()
        return j.status()

    # --- remote link calls (the secondary drives the primary) -----------------------------------

    async def handle_call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            if method == "repl.prepare_primary":
                return await self.prepare_primary(peer, params)
            if method == "repl.journal_status":
                return await self.primary_status(str(params["group"]), params.get("at_pos"))
            if method == "repl.purge":
                return await self.purge(str(params["group"]), int(params["upto_pos"]), int(params["upto_seq"]))
            if method == "repl.state":
                g = self._primary(str(params["group"]))
                if g.state != "PSUE" or params["state"] in ("PSUS", "SMPL"):
                    g.set_state(str(params["state"]), str(params.get("error", "")))
                    self.save()
                return {"state": g.state}
            if method == "repl.split":
                return await self._primary_split(str(params["group"]))
            if method == "repl.resync":
                return await self._primary_resync(str(params["group"]))
            if method == "repl.delete":
                return await self._primary_delete(str(params["group"]))
            if method == "repl.fence":
                return await self._fence(str(params["group"]), str(params.get("why", "")))
            if method == "repl.become_secondary":
                return await self._become_secondary(peer, params)
            if method == "repl.forward":
                return await self._forwarded(str(params["op"]), str(params["group"]), params)
            if method == "repl.lost_writes":
                return await self._lost_writes(str(params["group"]), int(params["from_seq"]))
        except CommandError as exc:
            raise RemoteError(Status.WRONG_STATE if exc.status == ResultStatus.WRONG_STATE else Status.BAD_REQUEST,
                              str(exc)) from None
        except (KeyError, ValueError, TypeError) as exc:
            raise RemoteError(Status.BAD_REQUEST, f"{method}: bad parameters: {exc}") from None
        raise RemoteError(Status.BAD_REQUEST, f"unknown method {method!r}")

    async def _primary_split(self, name: str) -> dict[str, Any]:
        g = self._primary(name)
        order = self.orders[name]
        async with order.lock:
            order.journaling = False
        g.set_state("PSUS")
        self.save()
        return {"state": g.state}

    async def _primary_resync(self, name: str) -> dict[str, Any]:
        """Hand the secondary the regions written while suspended and journal again from now on."""
        g = self._primary(name)
        order = self.orders[name]
        j = self.journals[name]
        async with order.lock:
            dirty = {str(k): sorted(v) for k, v in order.dirty.items()}
            order.dirty = {}
            g.dirty = {}
            order.journaling = True
            g.set_state("COPY")
            self.save()
            return {"dirty": dirty, "in_pos": j.ptr.in_pos, "next_seq": j.ptr.next_seq, "region": REGION}

    async def _primary_delete(self, name: str) -> dict[str, Any]:
        g = self._primary(name)
        async with self.orders[name].lock:
            for p in g.pairs:
                self._unwrap(p.pvol)
        del self.groups[name]
        self.journals.pop(name, None)
        self.orders.pop(name, None)
        self.save()
        return {"state": "SMPL"}

    async def _fence(self, name: str, why: str) -> dict[str, Any]:
        """Stop host writes to the P-VOLs (takeover by the peer): they answer DATA PROTECT from now on.
        Taken under the write-order lock, so every write already acknowledged is in the journal."""
        g = self._primary(name)
        async with self.orders[name].lock:
            for p in g.pairs:
                self._lu(p.pvol, "P-VOL").write_protected = True
            g.fenced = True
            if why:
                g.set_state("PSUE", why)
            self.save()
        log.warning("group %s: P-VOLs fenced (read-only)%s", name, f": {why}" if why else "")
        return await self.primary_status(name)

    async def _lost_writes(self, name: str, from_seq: int) -> dict[str, Any]:
        """What this old primary acknowledged that the peer never acquired: entries from ``from_seq``
        on, plus regions written while suspended. A reverse resync overwrites them."""
        g = self._primary(name)
        j = self.journals[name]
        regions: dict[str, set[int]] = {k: set(v) for k, v in g.dirty.items()}
        entries = n_bytes = 0
        first_ns = last_ns = 0
        if from_seq <= j.committed_seq:
            for e in await j.scan(j.ptr.out_pos, j.ptr.out_seq, stop_at=j.committed_pos):
                if e.seq < from_seq:
                    continue
                entries += 1
                n_bytes += e.length
                first_ns = first_ns or e.time_ns
                last_ns = e.time_ns
                regions.setdefault(str(e.volume), set()).update(
                    range(e.offset // REGION, (e.offset + max(e.length, 1) - 1) // REGION + 1))
        dirty_regions = sum(len(v) for v in g.dirty.values())
        return {"entries": entries, "bytes": n_bytes, "first_ns": first_ns, "last_ns": last_ns,
                "dirty_regions": dirty_regions, "regions": {k: sorted(v) for k, v in regions.items()},
                "region": REGION}

    async def _become_secondary(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        """Swap (Fig. 20): this array stops journaling and turns its group into the secondary of
        ``peer``, whose new primary journal is described in ``params``."""
        name = str(params["group"])
        g = self._primary(name)
        order = self.orders[name]
        async with order.lock:
            for p in g.pairs:
                self._unwrap(p.pvol)
                self._lu(p.pvol, "S-VOL").write_protected = True
            order.journaling = False
        self.journals.pop(name, None)
        self.orders.pop(name, None)
        pairs = [Pair(pvol=p.svol, svol=p.pvol, state="PAIR", size=p.size, copied=p.size) for p in g.pairs]
        ng = Group(name, "secondary", peer, pjnl=int(params["pjnl"]), sjnl=g.pjnl, pairs=pairs, state="PAIR",
                   epoch=int(params["epoch"]), head=int(params["head"]), end=int(params["end"]),
                   block_size=int(params["block_size"]), restored_pos=int(params["in_pos"]),
                   restored_seq=int(params["next_seq"]), read_pos=int(params["in_pos"]), read_seq=int(params["next_seq"]))
        regions = params.get("copy_regions")
        if regions is not None:  # a reverse resync: copy these regions from the new primary first
            ng.set_state("COPY")
            for p in ng.pairs:
                p.state, p.copied = "COPY", 0
            self._resync_regions[name] = {int(k): [(int(a), int(b)) for a, b in v] for k, v in regions.items()}
        jstore = self._inner(self._lu(ng.sjnl, "secondary journal"))
        await jstore.write(0, encode_superblock(name, ng.block_size, ng.head, ng.end, ng.epoch), fua=True)
        self.secondary_journal[name] = Superblock(name, ng.block_size, ng.head, ng.end, ng.epoch)
        self.groups[name] = ng
        self.save()
        log.warning("group %s: swapped: %s is now the primary, this array the secondary (%s)", name, peer, ng.state)
        self._spawn(ng)
        return {"group": name, "state": ng.state, "role": "secondary"}

    # --- secondary side: pair formation and the copy ---------------------------------------------

    def _protect(self, g: Group) -> None:
        for p in g.pairs:
            self._lu(p.svol, "S-VOL").write_protected = not g.writable

    def _spawn(self, g: Group) -> None:
        task = self._tasks.get(g.name)
        if task is None or task.done():
            self._tasks[g.name] = asyncio.get_running_loop().create_task(self._run(g.name), name=f"repl-{g.name}")

    async def pair_create(self, params: dict[str, Any], origin: str) -> dict[str, Any]:
        name, peer = str(params["group"]), str(params["peer"])
        pvol, svol, pjnl, sjnl = (int(params[k]) for k in ("pvol", "svol", "pjnl", "sjnl"))
        if peer == self.array.name or peer not in self.array.links:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"{peer} is not a peer array of {self.array.name}")
        async with self.lock(name):
            g = self.groups.get(name)
            s_lu = self._lu(svol, "S-VOL")
            j_lu = self._lu(sjnl, "secondary journal")
            if g is not None and (g.role != "secondary" or g.peer != peer or g.sjnl != sjnl or g.pjnl != pjnl):
                raise CommandError(ResultStatus.BAD_PARAMETER, f"group {name} exists with other arrays or journals")
            if g is not None and g.state not in ("PAIR", "COPY"):
                raise _wrong_state(g, "adding a pair", ("PAIR", "COPY"))
            used = self._used_luns()
            if svol in used or (g is None and sjnl in used) or svol == sjnl:
                raise CommandError(ResultStatus.BAD_PARAMETER, f"LUN {svol} or {sjnl} is already used by a group")
            info = await self._link_call(peer, "repl.prepare_primary", {"group": name, "pvol": pvol, "pjnl": pjnl,
                                                                        "svol": svol, "sjnl": sjnl})
            if info["size"] != s_lu.num_blocks * s_lu.block_size:
                raise CommandError(ResultStatus.BAD_PARAMETER, f"S-VOL LUN {svol} has {s_lu.num_blocks * s_lu.block_size}"
                                   f" bytes, the P-VOL {info['size']}: sizes must match")
            if g is None:
                if j_lu.num_blocks * j_lu.block_size < info["end"]:
                    raise CommandError(ResultStatus.BAD_PARAMETER, "the secondary journal is smaller than the primary's")
                g = Group(name, "secondary", peer, pjnl, sjnl, epoch=info["epoch"], head=info["head"], end=info["end"],
                          block_size=info["block_size"], restored_pos=info["in_pos"], restored_seq=info["next_seq"],
                          read_pos=info["in_pos"], read_seq=info["next_seq"])
                await self._inner(j_lu).write(0, encode_superblock(name, g.block_size, g.head, g.end, g.epoch), fua=True)
                self.secondary_journal[name] = Superblock(name, g.block_size, g.head, g.end, g.epoch)
                self.groups[name] = g
            g.pairs.append(Pair(pvol, svol, "COPY", info["size"]))
            g.set_state("COPY")
            self._protect(g)
            self.save()
            log.info("group %s: pair %s:%d -> %s:%d created by %s; initial copy starts", name, peer, pvol,
                     self.array.name, svol, origin or "?")
            self._spawn(g)
            return {"group": name, "state": g.state}

    async def _link_call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        link = self.array.links[peer]
        try:
            return await link.call(method, params)
        except RemoteError as exc:
            raise CommandError(ResultStatus.WRONG_STATE if exc.status == Status.WRONG_STATE
                               else ResultStatus.BAD_PARAMETER, f"{peer}: {exc.message}") from None
        except LinkError as exc:
            raise CommandError(ResultStatus.UNREACHABLE, f"{peer} is unreachable: {exc}") from None

    async def _copy_regions(self, g: Group, pair: Pair, regions: list[tuple[int, int]] | None) -> None:
        """Copy the P-VOL (or only ``regions``) to the S-VOL, skipping holes (they become holes)."""
        link = self._link(g)
        target = ""
        dest = self._inner(self._lu(pair.svol, "S-VOL"))
        ranges = regions if regions is not None else [(0, pair.size)]
        pair.copied = 0
        total = sum(n for _, n in ranges) or 1
        pair.size = pair.size or total
        sem = asyncio.Semaphore(COPY_PARALLEL)

        async def chunk(off: int, n: int) -> None:
            async with sem:
                data = await link.read(target, pair.pvol, off, n)
                await dest.write(off, data)
                pair.copied += n

        for start, length in ranges:
            pos = start
            while pos < start + length:
                span = min(64 << 20, start + length - pos)
                extents = await link.extents(target, pair.pvol, pos, span)
                jobs = []
                for ext in extents:
                    if not ext.mapped:
                        await dest.unmap(ext.offset, ext.length)
                        pair.copied += ext.length
                        continue
                    off = ext.offset
                    while off < ext.offset + ext.length:
                        n = min(COPY_CHUNK, ext.offset + ext.length - off)
                        jobs.append(chunk(off, n))
                        off += n
                await asyncio.gather(*jobs)
                pos += span
        await dest.flush()
        if regions is not None:
            pair.copied = pair.size

    # --- secondary side: acquisition, restore, purge ---------------------------------------------

    async def acquire(self, g: Group, upto: int | None = None) -> dict[str, Any]:
        """Journal acquisition (Fig. 13): read the primary ring's new bytes into our journal."""
        link = self._link(g)
        st = await self._call(g, "repl.journal_status", {"group": g.name})
        target = st["journal_in"] if upto is None else int(upto)
        sb = self.secondary_journal[g.name]
        jstore = self._inner(self._lu(g.sjnl, "secondary journal"))
        if target == g.read_pos:
            return {"acquired": 0, "primary": st}
        self._to_be_read[g.name] = target  # Fig. 15: the read in progress ends here
        ranges = ([(g.read_pos, target)] if g.read_pos < target else [(g.read_pos, sb.end), (sb.head, target)])
        for a, b in ranges:
            pos = a
            while pos < b:
                n = min(ACQUIRE_CHUNK, b - pos)
                data = await link.read("", g.pjnl, pos, n)
                await jstore.write(pos, data)
                pos += n
        entries = await read_entries(jstore, sb, g.read_pos, g.read_seq, stop_at=target)
        await jstore.flush()
        g.read_pos, g.read_seq = target, (entries[-1].seq + 1 if entries else g.read_seq)
        self.save()
        self._progress.set()
        return {"acquired": len(entries), "primary": st}

    async def restore(self, g: Group) -> int:
        """Restore (Fig. 14): apply every acquired entry, in sequence order, to the S-VOLs."""
        if g.state == "COPY":
            raise _wrong_state(g, "restore", ("PAIR", "PSUS", "PSUE"))
        sb = self.secondary_journal[g.name]
        jstore = self._inner(self._lu(g.sjnl, "secondary journal"))
        done = 0
        self._to_be_restored[g.name] = g.read_pos  # Fig. 15: the restore in progress ends here
        while g.restored_seq < g.read_seq:
            entries = await read_entries(jstore, sb, g.restored_pos, g.restored_seq, stop_at=g.read_pos,
                                         max_bytes=RESTORE_BATCH)
            if not entries:
                raise JournalCorrupt(f"group {g.name}: no entry {g.restored_seq} at {g.restored_pos}")
            touched: set[int] = set()
            for e in entries:
                svol = g.svol_of(e.volume)
                store = self._inner(self._lu(svol, "S-VOL"))
                if e.zero_length:
                    await store.write_zeroes(e.offset, e.zero_length)
                else:
                    await store.write(e.offset, e.data)
                touched.add(svol)
            for svol in touched:
                await self._inner(self._lu(svol, "S-VOL")).flush()
            last = entries[-1]
            g.restored_seq = last.seq + 1
            g.restored_pos = g.read_pos if g.restored_seq == g.read_seq else _next_pos(sb, last.lba + last.span)
            g.restored_time_ns = last.time_ns
            done += len(entries)
            self.save()  # after the S-VOLs are synced: a crash re-applies at most this batch, in order
            self._progress.set()
        return done

    async def purge_primary(self, g: Group) -> None:
        await self._call(g, "repl.purge", {"group": g.name, "upto_pos": g.read_pos, "upto_seq": g.read_seq})

    async def cycle(self, g: Group) -> dict[str, int]:
        """One round of the Fig. 16 loop, as the secondary runs it by itself."""
        async with self.lock(g.name):
            got = await self.acquire(g)
            self._last_primary[g.name] = got["primary"]
            restored = await self.restore(g) if g.state != "COPY" else 0
            if got["acquired"]:
                await self.purge_primary(g)
            pstate = got["primary"].get("state")
            if pstate == "PSUE" and g.state != "PSUE":
                g.set_state("PSUE", got["primary"].get("error", "suspended by the primary"))
                self.save()
            return {"acquired": got["acquired"], "restored": restored}

    async def _run(self, name: str) -> None:
        """The secondary's own loop: finish any copy, then acquire/restore/purge every interval."""
        while name in self.groups and self.groups[name].role == "secondary":
            g = self.groups[name]
            try:
                if g.state == "COPY":
                    await self._finish_copy(g)
                    continue
                if g.state in ("PAIR", "PSUE"):
                    await self.cycle(g)
                    if g.state == "PAIR":
                        g.error = ""  # a transient link error is over once a round succeeds
                elif g.state == "SSWS" and not g.fenced:
                    # The old primary is back: stop its hosts writing, or both sides would diverge.
                    await self._call(g, "repl.fence", {"group": name, "why": f"{self.array.name} took over (SSWS)"})
                    g.fenced = True
                    self.save()
                    log.warning("group %s: old primary %s fenced after the takeover", name, g.peer)
            except asyncio.CancelledError:
                raise
            except CommandError as exc:
                g.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - the loop must survive and report
                log.exception("group %s: replication round failed", name)
                g.error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.interval)

    async def _finish_copy(self, g: Group) -> None:
        pending = [p for p in g.pairs if p.state == "COPY"]
        regions = self._resync_regions.get(g.name, {})
        for p in pending:
            await self._copy_regions(g, p, regions.get(p.pvol))
            p.state = "PAIR"
            self.save()
        async with self.lock(g.name):
            if all(p.state == "PAIR" for p in g.pairs) and g.state == "COPY":
                self._resync_regions.pop(g.name, None)
                g.set_state("PAIR")
                self.save()
                log.info("group %s: initial copy done; PAIR", g.name)
                try:
                    await self._call(g, "repl.state", {"group": g.name, "state": "PAIR"})
                except CommandError as exc:
                    g.error = str(exc)

    # --- takeover and swap (Fig. 17-21) ----------------------------------------------------------

    async def takeover(self, name: str, dry_run: bool) -> dict[str, Any]:
        """Make this secondary the writable side: a swap when the primary answers, SSWS when not."""
        g = self._group(name)
        if g.role != "secondary":
            raise CommandError(ResultStatus.BAD_PARAMETER, f"group {name} is already primary here; nothing to take over")
        if g.state not in ("PAIR", "PSUE", "PSUS"):
            raise _wrong_state(g, "takeover", ("PAIR", "PSUE", "PSUS"))
        try:
            st = await self._link(g).call("repl.journal_status", {"group": name}, timeout=3.0)
            reachable = True
        except (LinkError, RemoteError):
            st, reachable = self._last_primary.get(name, {}), False
        unrestored = g.read_seq - g.restored_seq
        unread = max(0, int(st.get("next_seq", g.read_seq)) - g.read_seq)
        variant = "swap" if reachable and g.state == "PAIR" else "svol-takeover"
        plan = {"group": name, "variant": variant, "primary_reachable": reachable,
                "to_restore": {"entries": unrestored + (unread if reachable else 0)},
                "at_risk": {"entries": 0 if reachable else unread,
                            "known_as_of_ns": st.get("now_ns"),
                            "note": "" if reachable else "entries the primary had journaled but this array never "
                                                          "acquired, as of the last contact; later writes are unknown"}}
        if dry_run:
            return plan
        async with self.lock(name):
            if variant == "swap":
                await self._swap(g)
            else:
                await self.restore(g) if g.state != "COPY" else None
                g.set_state("SSWS", "" if reachable else "takeover while the primary was unreachable")
                g.writable = True
                self._protect(g)
                self._track_writes(g)
                self.save()
                log.warning("group %s: takeover: S-VOLs writable (SSWS); writes tracked for a reverse resync", name)
        return {**plan, "state": self.groups[name].state, "role": self.groups[name].role}

    def _track_writes(self, g: Group) -> None:
        for p in g.pairs:
            lu = self._lu(p.svol, "S-VOL")
            if not isinstance(lu.backstore, _TrackedStore):
                lu.backstore = _TrackedStore(lu.backstore, lambda off, n, v=p.pvol: self._sdirty(g, v, off, n))

    def _sdirty(self, g: Group, volume: int, offset: int, length: int) -> None:
        regions = set(g.dirty.get(str(volume), []))
        new = set(range(offset // REGION, (offset + max(length, 1) - 1) // REGION + 1)) - regions
        if new:
            g.dirty[str(volume)] = sorted(regions | new)
            self.save()

    async def _become_primary(self, g: Group) -> dict[str, Any]:
        """This array's S-VOLs become P-VOLs journaling into its (old secondary) journal LUN."""
        name = g.name
        for p in g.pairs:
            lu = self._lu(p.svol, "S-VOL")
            if isinstance(lu.backstore, _TrackedStore):
                lu.backstore = lu.backstore.inner
        pairs = [Pair(pvol=p.svol, svol=p.pvol, state="PAIR", size=p.size, copied=p.size) for p in g.pairs]
        ng = Group(name, "primary", g.peer, pjnl=g.sjnl, sjnl=g.pjnl, pairs=pairs, state="PAIR")
        self.secondary_journal.pop(name, None)
        await self._attach_primary(ng, reopen=False)
        for p in ng.pairs:
            self._lu(p.pvol, "P-VOL").write_protected = False
        self.groups[name] = ng
        self.save()
        j = self.journals[name]
        return {"group": name, "pjnl": ng.pjnl, "epoch": j.sb.epoch, "head": j.sb.head, "end": j.sb.end,
                "block_size": j.sb.block_size, "in_pos": j.ptr.in_pos, "next_seq": j.ptr.next_seq}

    async def _swap(self, g: Group) -> None:
        name = g.name
        final = await self._call(g, "repl.fence", {"group": name})  # no more host writes on the old primary
        await self.acquire(g, final["journal_in"])
        await self.restore(g)
        if g.restored_seq != final["next_seq"]:  # Fig. 19 S1905: restore must be complete before the swap
            raise CommandError(ResultStatus.FAILED, f"restore incomplete ({g.restored_seq} of {final['next_seq']})")
        await self.purge_primary(g)
        task = self._tasks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        info = await self._become_primary(g)
        await self._call(g, "repl.become_secondary", info)
        log.warning("group %s: swapped: this array is now the primary of %s", name, g.peer)

    async def resync_swap(self, name: str, force: bool) -> dict[str, Any]:
        """Reverse resync after an SSWS takeover (like ``pairresync -swaps``): this array becomes
        the primary and the old primary copies back only what differs."""
        g = self._group(name)
        if g.role != "secondary" or g.state != "SSWS":
            raise _wrong_state(g, "pairresync with swap", ("SSWS",))
        lost = await self._call(g, "repl.lost_writes", {"group": name, "from_seq": g.read_seq})
        if (lost["entries"] or lost["dirty_regions"]) and not force:
            when = ""
            if lost["first_ns"]:
                when = (f", written between {time.strftime('%H:%M:%S', time.localtime(lost['first_ns'] / 1e9))} and "
                        f"{time.strftime('%H:%M:%S', time.localtime(lost['last_ns'] / 1e9))}")
            raise CommandError(ResultStatus.WRONG_STATE,
                               f"resync would discard {lost['entries']} writes ({lost['bytes']} bytes{when}) and "
                               f"{lost['dirty_regions']} changed MiB-regions on {g.peer} that never reached "
                               f"{self.array.name}; repeat with force to accept losing them")
        async with self.lock(name):
            region = int(lost["region"])
            regions: dict[str, set[int]] = {k: set(v) for k, v in lost["regions"].items()}
            for vol, regs in g.dirty.items():
                regions.setdefault(vol, set()).update(regs)
            await self._call(g, "repl.fence", {"group": name, "why": f"{self.array.name} took over"})
            sizes = {p.pvol: p.size for p in g.pairs}
            svol_of = {p.pvol: p.svol for p in g.pairs}
            copy = {str(svol_of[int(v)]): [(r * region, min(region, sizes[int(v)] - r * region)) for r in sorted(rs)]
                    for v, rs in regions.items()}
            g.dirty = {}
            info = await self._become_primary(g)
            await self._call(g, "repl.become_secondary", {**info, "copy_regions": copy})
        return {"group": name, "state": "COPY", "role": "primary",
                "copied_regions": sum(len(v) for v in copy.values())}

    # --- commands common to both sides ----------------------------------------------------------

    def _group(self, name: str) -> Group:
        g = self.groups.get(name)
        if g is None:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"no group {name} on {self.array.name} (SMPL)")
        return g

    async def display(self, name: str | None = None) -> dict[str, Any]:
        out = []
        for g in self.groups.values():
            if name is not None and g.name != name:
                continue
            entry: dict[str, Any] = {
                "group": g.name, "role": g.role, "peer": g.peer, "state": g.state, "error": g.error,
                "pairs": [{"pvol": f"{g.peer if g.role == 'secondary' else self.array.name}:{p.pvol}",
                           "svol": f"{self.array.name if g.role == 'secondary' else g.peer}:{p.svol}",
                           "state": p.state, "copy_percent": p.copy_percent} for p in g.pairs],
            }
            if g.role == "primary":
                st = self.journals[g.name].status()
                entry["journal"] = {k: st[k] for k in ("bytes_used", "capacity", "entries")}
                entry["pointers"] = {"journal_out": st["journal_out"], "journal_in": st["journal_in"]}
            else:
                entry.update(await self._secondary_view(g))
            out.append(entry)
        if name is not None and not out:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"no group {name} on {self.array.name} (SMPL)")
        return {"groups": out}

    async def _secondary_view(self, g: Group) -> dict[str, Any]:
        view: dict[str, Any] = {"pointers": {
            "restoration_completed": g.restored_pos,
            "to_be_restored": self._to_be_restored.get(g.name, g.restored_pos),
            "read_completed": g.read_pos, "to_be_read": self._to_be_read.get(g.name, g.read_pos),
            "restored_seq": g.restored_seq, "read_seq": g.read_seq}}
        try:
            st = await self._link(g).call("repl.journal_status", {"group": g.name, "at_pos": g.read_pos}, timeout=2.0)
        except (LinkError, CommandError) as exc:
            view["lag_seconds"] = None
            view["link"] = f"down: {exc}"
            return view
        view["journal"] = {k: st[k] for k in ("bytes_used", "capacity", "entries")}
        behind_entries = st["next_seq"] - g.restored_seq
        behind_bytes = (st["journal_in"] - g.restored_pos) % max(1, g.end - g.head)
        view["behind"] = {"entries": behind_entries, "bytes": behind_bytes}
        oldest = 0
        if g.restored_seq < g.read_seq:
            hdr = decode_header(await self._inner(self._lu(g.sjnl, "secondary journal")).read(g.restored_pos, 512))
            oldest = hdr.time_ns if hdr is not None else 0
        elif st["next_seq"] > g.read_seq:
            oldest = st.get("time_at_pos_ns") or st.get("oldest_time_ns", 0)
        view["lag_seconds"] = round(max(0, st["now_ns"] - oldest) / 1e9, 3) if oldest else 0.0
        view["primary_next_seq"] = st["next_seq"]
        return view

    async def _forwarded(self, op: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """A pair command the primary received from a host and passed on: the secondary runs it,
        since it drives the pair (so ``pairsplit`` works from either side, as with HORCM)."""
        g = self.groups.get(name)
        if g is None or g.role != "secondary":
            raise RemoteError(Status.NOT_FOUND, f"no secondary group {name} on {self.array.name}")
        try:
            if op == "split":
                return await self.split(name, bool(params.get("rw", False)))
            if op == "delete":
                return await self.delete(name)
        except CommandError as exc:
            raise RemoteError(Status.WRONG_STATE if exc.status == ResultStatus.WRONG_STATE else Status.BAD_REQUEST,
                              str(exc)) from None
        raise RemoteError(Status.BAD_REQUEST, f"cannot forward {op!r}")

    async def split(self, name: str, rw: bool) -> dict[str, Any]:
        g = self._group(name)
        if g.state not in ("PAIR", "COPY"):
            raise _wrong_state(g, "pairsplit", ("PAIR", "COPY"))
        if g.role == "primary":
            result = await self._call(g, "repl.forward", {"op": "split", "group": name, "rw": rw})
            return {**result, "via": g.peer}
        async with self.lock(name):
            if g.state == "PAIR":
                await self.acquire(g)  # take what the primary journaled up to now
                await self.restore(g)
                await self.purge_primary(g)
            await self._call(g, "repl.split", {"group": name})
            g.set_state("PSUS")
            g.writable = rw
            self._protect(g)
            self.save()
        return {"group": name, "state": g.state, "writable": g.writable}

    async def resync(self, name: str, force: bool, swap: bool = False) -> dict[str, Any]:
        g = self._group(name)
        if swap or g.state == "SSWS":
            return await self.resync_swap(name, force)
        if g.role != "secondary":
            raise CommandError(ResultStatus.BAD_PARAMETER, "run pairresync on the S-VOL's array (the secondary)")
        if g.state not in ("PSUS", "PSUE"):
            raise _wrong_state(g, "pairresync", ("PSUS", "PSUE"))
        if g.writable and not force:
            raise CommandError(ResultStatus.WRONG_STATE,
                               f"group {name}'s S-VOLs were writable while split: a resync from {g.peer} would "
                               "discard whatever was written on them since; repeat with force to accept that")
        async with self.lock(name):
            await self.acquire(g)  # entries journaled before the suspension come first
            await self.restore(g)
            await self.purge_primary(g)
            info = await self._call(g, "repl.resync", {"group": name})
            region = int(info["region"])
            regions: dict[int, list[tuple[int, int]]] = {}
            for p in g.pairs:
                dirty = info["dirty"].get(str(p.pvol), [])
                regions[p.pvol] = [(r * region, min(region, p.size - r * region)) for r in dirty]
                if g.writable:  # force: everything that may differ on the S-VOL side too
                    regions[p.pvol] = [(0, p.size)]
            self._resync_regions[name] = regions
            g.writable = False
            g.set_state("COPY")
            self._protect(g)
            self.save()
            self._spawn(g)
        return {"group": name, "state": g.state,
                "regions": {str(k): len(v) for k, v in regions.items()}}

    async def delete(self, name: str) -> dict[str, Any]:
        g = self._group(name)
        async with self.lock(name):
            if g.role == "secondary":
                task = self._tasks.pop(name, None)
                if task is not None:
                    task.cancel()
                try:
                    await self._call(g, "repl.delete", {"group": name})
                except CommandError as exc:
                    log.warning("group %s: primary not told of the delete: %s", name, exc)
                for p in g.pairs:
                    self._lu(p.svol, "S-VOL").write_protected = False
            else:
                try:  # the secondary un-protects its S-VOLs and tells us back
                    await self._call(g, "repl.forward", {"op": "delete", "group": name})
                except CommandError as exc:
                    log.warning("group %s: deleted here only; the secondary %s was not told: %s", name, g.peer, exc)
                if name in self.groups:
                    await self._primary_delete(name)
                return {"group": name, "state": "SMPL"}
            del self.groups[name]
            self.save()
        return {"group": name, "state": "SMPL"}

    async def journal_status(self, name: str) -> dict[str, Any]:
        g = self._group(name)
        if g.role == "primary":
            return await self.primary_status(name)
        view = await self._secondary_view(g)
        return {"group": name, "role": "secondary", "state": g.state, **view["pointers"],
                "lag_seconds": view.get("lag_seconds")}

    async def syncwait(self, name: str, seq: int | None, timeout: float) -> dict[str, Any]:
        g = self._group(name)
        if g.role != "secondary":
            raise CommandError(ResultStatus.BAD_PARAMETER, "pairsyncwait runs on the secondary")
        deadline = time.monotonic() + timeout
        while seq is None:  # the newest write on the primary now; the link may still be coming up
            try:
                st = await self._call(g, "repl.journal_status", {"group": name})
                seq = int(st["next_seq"]) - 1
            except CommandError:
                if time.monotonic() >= deadline:
                    return {"result": "TIMEOUT", "seq": None, "restored_seq": g.restored_seq - 1}
                await asyncio.sleep(0.2)
        while True:
            if g.state in ("PSUE", "SMPL") or name not in self.groups:
                return {"result": "BROKEN", "seq": seq, "restored_seq": g.restored_seq - 1}
            if g.restored_seq > seq:
                return {"result": "DONE", "seq": seq, "restored_seq": g.restored_seq - 1}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"result": "TIMEOUT", "seq": seq, "restored_seq": g.restored_seq - 1}
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), min(left, 0.5))
            except TimeoutError:
                pass


def _next_pos(sb: Superblock, pos: int) -> int:
    return sb.head if pos >= sb.end else pos


class _TrackedStore(Backstore):
    """An S-VOL made writable by takeover: writes go through and their regions are recorded, so a
    reverse resync copies only what changed."""

    def __init__(self, inner: Backstore, mark: Any) -> None:
        self.inner = inner
        self.mark = mark
        self.size = inner.size
        self.thin = inner.thin

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        self.mark(offset, len(data))
        await self.inner.write(offset, data, fua)

    async def flush(self) -> None:
        await self.inner.flush()

    async def unmap(self, offset: int, length: int) -> None:
        self.mark(offset, length)
        await self.inner.unmap(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.mark(offset, length)
        await self.inner.write_zeroes(offset, length)

    async def extents(self, offset: int, length: int) -> list:  # type: ignore[type-arg]
        return await self.inner.extents(offset, length)

    def close(self) -> None:
        self.inner.close()

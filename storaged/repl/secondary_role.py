"""The secondary side: pair formation and the copy, journal acquisition, restore and purge, and
the autonomous loop (spec Fig. 13-16)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..remote.api import LinkError, RemoteError
from ..logfmt import LOG_FIELDS
from ..remote.protocol import Status
from .journal import (
    JournalCorrupt,
    Superblock,
    encode_superblock,
    read_entries,
)
from .model import COPY_END_UNKNOWN, Group, Pair, _wrong_state
from .states import Event, State
from .primary_role import PrimaryRole

if TYPE_CHECKING:
    from ..scsi.lu import LogicalUnit

log = logging.getLogger("storaged.repl")

COPY_CHUNK = 4 << 20
COPY_PARALLEL = 6
ACQUIRE_CHUNK = 4 << 20
RESTORE_BATCH = 64 << 20

class SecondaryRole(PrimaryRole):
    # --- secondary side: pair formation and the copy ---------------------------------------------

    def _protect(self, g: Group) -> None:
        for p in g.pairs:
            self._lu(p.svol, "S-VOL", g.target).held = not g.writable

    def _spawn(self, g: Group) -> None:
        task = self._tasks.get(g.name)
        if task is None or task.done():
            self._tasks[g.name] = asyncio.get_running_loop().create_task(self._run(g.name), name=f"repl-{g.name}")

    async def pair_create(self, params: dict[str, Any], origin: str) -> dict[str, Any]:
        name, peer = str(params["group"]), str(params["peer"])
        pvol, svol, pjnl, sjnl = (int(params[k]) for k in ("pvol", "svol", "pjnl", "sjnl"))
        if peer == self.array.name or peer not in self.array.links:
            raise CommandError(ResultStatus.BAD_PARAMETER, f"{peer} is not a peer array of {self.array.name}")
        target, peer_target = str(params.get("target", "")), str(params.get("peer_target", ""))
        async with self.lock(name):
            g = self.groups.get(name)
            if g is not None and (g.role != "secondary" or g.peer != peer or g.sjnl != sjnl or g.pjnl != pjnl
                                  or g.target != target or g.peer_target != peer_target):
                raise CommandError(ResultStatus.BAD_PARAMETER, f"group {name} exists with other arrays or journals")
            s_lu = self._lu(svol, "S-VOL", target)
            j_lu = self._lu(sjnl, "secondary journal", target)
            if g is not None and g.state not in (State.PAIR, State.COPY):
                raise _wrong_state(g, "adding a pair", ("PAIR", "COPY"))
            used = self._used_luns()
            t = self._tname(target)
            if (t, svol) in used or (g is None and (t, sjnl) in used) or svol == sjnl:
                raise CommandError(ResultStatus.BAD_PARAMETER, f"LUN {svol} or {sjnl} is already used by a group")
            info = await self._link_call(peer, "repl.prepare_primary", {"group": name, "pvol": pvol, "pjnl": pjnl,
                                                                        "svol": svol, "sjnl": sjnl,
                                                                        "target": peer_target,
                                                                        "peer_target": target})
            if info["size"] != s_lu.num_blocks * s_lu.block_size:
                raise CommandError(ResultStatus.BAD_PARAMETER, f"S-VOL LUN {svol} has {s_lu.num_blocks * s_lu.block_size}"
                                   f" bytes, the P-VOL {info['size']}: sizes must match")
            was_held, s_lu.held = s_lu.held, True  # an S-VOL from here on
            try:
                await self._quiesce([s_lu])
                g = await self._add_pair(g, name, peer, pvol, svol, pjnl, sjnl, target, peer_target, info, j_lu)
            except BaseException:
                s_lu.held = was_held
                raise
            self._protect(g)
            self.save()
            log.info("group %s: pair %s:%d -> %s:%d created by %s; initial copy starts", name, peer, pvol,
                     self.array.name, svol, origin or "?")
            self._spawn(g)
            return {"group": name, "state": g.state}

    async def _add_pair(self, g: Group | None, name: str, peer: str, pvol: int, svol: int, pjnl: int, sjnl: int,
                        target: str, peer_target: str, info: dict[str, Any], j_lu: LogicalUnit) -> Group:
        """The group (created with its journal on first use) gains the pair, in COPY of all of it."""
        if g is None:
            if j_lu.num_blocks * j_lu.block_size < info["end"]:
                raise CommandError(ResultStatus.BAD_PARAMETER, "the secondary journal is smaller than the primary's")
            g = Group(name, "secondary", peer, pjnl, sjnl, state=State.SMPL.value, target=target,
                      peer_target=peer_target, epoch=info["epoch"], head=info["head"], end=info["end"],
                      block_size=info["block_size"], restored_pos=info["in_pos"], restored_seq=info["next_seq"],
                      read_pos=info["in_pos"], read_seq=info["next_seq"])
            await self._inner(j_lu).write(0, encode_superblock(name, g.block_size, g.head, g.end, g.epoch), fua=True)
            self.secondary_journal[name] = Superblock(name, g.block_size, g.head, g.end, g.epoch)
            self.groups[name] = g
        g.pairs.append(Pair(pvol, svol, "COPY", info["size"]))
        g.apply(Event.CREATE)
        g.copy_regions[str(pvol)] = [[0, info["size"]]]
        return g

    async def _link_call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        link = self.array.links[peer]
        try:
            return await link.call(method, params)
        except RemoteError as exc:
            raise CommandError(ResultStatus.WRONG_STATE if exc.status == Status.WRONG_STATE
                               else ResultStatus.BAD_PARAMETER, f"{peer}: {exc.message}") from None
        except LinkError as exc:
            raise CommandError(ResultStatus.UNREACHABLE, f"{peer} is unreachable: {exc}") from None

    async def _copy_regions(self, g: Group, pair: Pair, regions: list[tuple[int, int]]) -> None:
        """Copy ``regions`` of the P-VOL to the S-VOL, skipping holes (they become holes)."""
        link = self._link(g)
        target = g.peer_target
        dest = self._inner(self._lu(pair.svol, "S-VOL", g.target))
        ranges = regions
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
                jobs: list[tuple[int, int]] = []  # (offset, length): coroutines only once gathered
                for ext in extents:
                    if not ext.mapped:
                        await dest.unmap(ext.offset, ext.length)
                        pair.copied += ext.length
                        continue
                    off = ext.offset
                    while off < ext.offset + ext.length:
                        n = min(COPY_CHUNK, ext.offset + ext.length - off)
                        jobs.append((off, n))
                        off += n
                await asyncio.gather(*(chunk(o, k) for o, k in jobs))
                pos += span
        await dest.flush()
        pair.copied = pair.size

    # --- secondary side: acquisition, restore, purge ---------------------------------------------

    async def acquire(self, g: Group, upto: int | None = None, status: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Journal acquisition (Fig. 13): read the primary ring's new bytes into our journal, up
        to the primary's *durable* journal-in: an entry a power cut of the primary could still
        lose is never taken, so the S-VOL never holds a write the P-VOL may not have."""
        if g.role != "secondary" or g.state == State.SSWS:
            raise _wrong_state(g, "journal acquisition", ("PAIR", "COPY", "PSUS", "PSUE"))
        link = self._link(g)
        st = status if status is not None else await self._call(g, "repl.journal_status", {"group": g.name})
        if upto is None:
            upto = self._held_back_at(g, st)
        durable = int(st.get("durable_in", st["journal_in"]))
        target = durable if upto is None else int(upto)
        if upto is not None and st.get("durable_in") is not None and self._ring_ahead(g, int(upto), durable):
            target = durable  # never past what a power cut of the primary cannot take away
        sb = self.secondary_journal[g.name]
        jstore = self._inner(self._lu(g.sjnl, "secondary journal", g.target))
        if target == g.read_pos:
            return {"acquired": 0, "primary": st}
        self._to_be_read[g.name] = target  # Fig. 15: the read in progress ends here
        ranges = ([(g.read_pos, target)] if g.read_pos < target else [(g.read_pos, sb.end), (sb.head, target)])
        for a, b in ranges:
            pos = a
            while pos < b:
                n = min(ACQUIRE_CHUNK, b - pos)
                data = await link.read(g.peer_target, g.pjnl, pos, n)
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
        if g.role != "secondary" or g.state == State.SSWS:
            raise _wrong_state(g, "restore", ("PAIR", "PSUS", "PSUE"))
        if g.state == State.COPY and g.copying():
            raise _wrong_state(g, "restore while volumes are being copied", ("PAIR", "PSUS", "PSUE"))
        sb = self.secondary_journal[g.name]
        jstore = self._inner(self._lu(g.sjnl, "secondary journal", g.target))
        done = 0
        self._to_be_restored[g.name] = g.read_pos  # Fig. 15: the restore in progress ends here
        while g.restored_seq < g.read_seq:
            entries = await read_entries(jstore, sb, g.restored_pos, g.restored_seq, stop_at=g.read_pos,
                                         max_bytes=RESTORE_BATCH)
            if not entries:
                raise JournalCorrupt(f"group {g.name}: no entry {g.restored_seq} at {g.restored_pos}")
            touched: set[int] = set()
            pvols = set(g.pvols())
            for e in entries:
                if e.volume not in pvols:
                    continue  # a pair the primary set up whose paircreate reply was lost: its copy brings it
                svol = g.svol_of(e.volume)
                store = self._inner(self._lu(svol, "S-VOL", g.target))
                if e.zero_length:
                    await store.write_zeroes(e.offset, e.zero_length)
                else:
                    await store.write(e.offset, e.data)
                touched.add(svol)
            for svol in touched:
                await self._inner(self._lu(svol, "S-VOL", g.target)).flush()
            last = entries[-1]
            g.restored_seq = last.seq + 1
            g.restored_pos = g.read_pos if g.restored_seq == g.read_seq else _next_pos(sb, last.lba + last.span)
            g.restored_time_ns = last.time_ns
            done += len(entries)
            self.save()  # after the S-VOLs are synced: a crash re-applies at most this batch, in order
            self._progress.set()
        return done

    def _ring_ahead(self, g: Group, a: int, b: int) -> bool:
        """Is ring position ``a`` further than ``b`` from where this array has read (read-completed)?"""
        cap = max(1, g.end - g.head)
        return (a - g.read_pos) % cap > (b - g.read_pos) % cap

    async def purge_primary(self, g: Group) -> None:
        """Let the primary free what is *restored* here. Not what is merely acquired: this ring
        mirrors the primary's positions, so a position the primary reuses must be one this array
        no longer needs (while the S-VOLs are being copied, entries wait unrestored)."""
        await self._call(g, "repl.purge", {"group": g.name, "upto_pos": g.restored_pos, "upto_seq": g.restored_seq})

    @staticmethod
    def _held_back_at(g: Group, st: dict[str, Any]) -> int | None:
        """Where acquisition stops for a suspended secondary whose primary has entries that presume
        a resync copy this array never made (the resync's reply was lost): before them."""
        cf = st.get("copy_from")
        if not cf or g.state not in (State.PSUE, State.PSUS):
            return None
        if cf.get("restarted") or g.read_seq >= int(cf["seq"]):
            return g.read_pos  # nothing before them left to take
        return int(cf["pos"])

    async def cycle(self, g: Group) -> dict[str, int]:
        """One round of the Fig. 16 loop, as the secondary runs it by itself."""
        async with self.lock(g.name):
            st = await self._call(g, "repl.journal_status", {"group": g.name})
            self._last_primary[g.name] = {**st, "contact_ns": time.time_ns()}
            pstate = st.get("state")
            if g.state == State.PSUE and pstate == State.COPY:
                # a resync whose reply was lost: the primary journals again but the regions are not
                # copied here yet; entries now would leave the S-VOL neither old nor new
                return {"acquired": 0, "restored": 0}
            got = await self.acquire(g, status=st)
            before = g.restored_seq
            restored = await self.restore(g) if not (g.state == State.COPY and g.copying()) else 0
            if g.restored_seq != before or got["acquired"]:
                await self.purge_primary(g)
            if pstate == State.PSUE and g.state in (State.PAIR, State.COPY):
                g.apply(Event.FAIL, st.get("error") or "suspended by the primary")
                self.save()
            elif pstate == State.PSUS and g.state == State.PAIR:
                g.apply(Event.SPLIT, "split on the primary (the reply to this array was lost)")
                self._protect(g)
                self.save()
            elif pstate == State.COPY and g.state == State.PAIR:
                await self._call(g, "repl.copy_done", {"group": g.name})  # an earlier report was lost
            return {"acquired": got["acquired"], "restored": restored}

    async def _run(self, name: str) -> None:
        """The secondary's own loop: finish any copy, then acquire/restore/purge every interval."""
        LOG_FIELDS.set({"group": name, "peer": self.groups[name].peer if name in self.groups else None})
        while name in self.groups and self.groups[name].role == "secondary":
            g = self.groups[name]
            try:
                if g.state == State.COPY:
                    if g.copying():
                        await self._finish_copy(g)
                    if g.state == State.COPY and not g.copying():
                        await self._copy_consistent(g)
                elif g.state in ("PAIR", "PSUE"):
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
            except Exception as exc:
                log.exception("group %s: replication round failed", name)
                g.error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.interval)

    async def _finish_copy(self, g: Group) -> None:
        """Copy what ``copy_regions`` lists (persisted: a restart resumes). The S-VOLs are not
        consistent yet: they hold data read at different times, so the group stays COPY until
        restore passes the primary's journal-in as of the end of the copy (``copy_until_seq``)."""
        for p in [p for p in g.pairs if p.state == State.COPY]:
            listed = g.copy_regions.get(str(p.pvol))  # none listed (a table from before): all of it
            regions = [(int(a), int(n)) for a, n in listed] if listed is not None else [(0, p.size)]
            await self._copy_regions(g, p, regions)
            async with self.lock(g.name):
                if g.state != State.COPY:
                    return  # suspended meanwhile: the regions stay to be copied at the next resync
                p.state = State.PAIR.value
                g.copy_regions.pop(str(p.pvol), None)  # copy_until_seq is set once every pair is copied
                self.save()

    async def _copy_consistent(self, g: Group) -> None:
        """Restore past the end of the copy, then COPY -> PAIR; only then may the primary forget
        its differential regions (``repl.copy_done``)."""
        if g.state == State.COPY and not g.copying() and g.copy_until_seq in (0, COPY_END_UNKNOWN):
            st = await self._call(g, "repl.journal_status", {"group": g.name})
            async with self.lock(g.name):  # asked after the copy ended: at or past its end
                # Only a primary still in COPY journaled every write the copy may have read; one
                # that suspended meanwhile tracks them in its bitmap instead, so this copy stays
                # fuzzy (the cycle below adopts PSUE) and the next resync copies them again.
                if g.state == State.COPY and not g.copying() and g.copy_until_seq in (0, COPY_END_UNKNOWN) \
                        and st.get("state") == State.COPY:
                    g.copy_until_seq = int(st["next_seq"])
                    self.save()
        await self.cycle(g)
        async with self.lock(g.name):
            if g.state != State.COPY or g.copying() or g.restored_seq < g.copy_until_seq:
                return
            g.apply(Event.COPY_DONE)
            g.copy_until_seq = 0
            self.save()
            log.info("group %s: copy done and restored past it; PAIR", g.name)
            try:
                await self._call(g, "repl.copy_done", {"group": g.name})
            except CommandError as exc:
                g.error = str(exc)  # the next round reports it again


def _next_pos(sb: Superblock, pos: int) -> int:
    return sb.head if pos >= sb.end else pos



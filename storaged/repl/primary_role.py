"""The primary side of a journal group: journaling P-VOL writes, status, purge, split, resync,
delete and fence as the secondary asks for them over the remote link."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..remote.api import RemoteError
from ..remote.protocol import Status
from .core import ReplicationCore
from .journal import (
    HEAD_LBA_BYTES,
    PrimaryJournal,
    decode_header,
)
from .model import Group, Pair
from .states import JOURNALING, PRIMARY_WRITABLE, Event, State, allowed
from .activity import ActivityLog, recover_primary
from .primary import REGION, JournaledStore, WriteOrder

if TYPE_CHECKING:
    from ..scsi.lu import LogicalUnit

log = logging.getLogger("storaged.repl")


class PrimaryRole(ReplicationCore):
    # --- primary side ----------------------------------------------------------------------------

    async def _attach_primary(self, g: Group, reopen: bool) -> None:
        jstore = self._inner(self._lu(g.pjnl, "primary journal", g.target))
        if reopen:
            pvols = {p.pvol: self._inner(self._lu(p.pvol, "P-VOL", g.target)) for p in g.pairs}
            rec = await recover_primary(jstore, g.name, g.out_pos, g.out_seq, pvols,
                                        journaling=State(g.before_fence or g.state) in JOURNALING)
            journal, activity = rec.journal, rec.activity
            if rec.tail or rec.rejournaled:
                log.info("group %s: journal reopened: %d entries redone on the P-VOLs, %d suspect extents "
                         "re-journaled", g.name, len(rec.tail), rec.rejournaled)
            for vol, regions in rec.unjournaled.items():  # no journal room: the bitmap carries them
                g.dirty[str(vol)] = sorted(set(g.dirty.get(str(vol), [])) | regions)
        else:
            journal = await PrimaryJournal.format(jstore, g.name, self._lu(g.pjnl, "primary journal", g.target).block_size)
            activity = ActivityLog(journal)
            g.out_pos, g.out_seq = journal.ptr.out_pos, journal.ptr.out_seq
        self.journals[g.name] = journal
        def on_full(why: str) -> None:
            self._journal_full(g, why)

        async def on_dirty(volume: int, regions: set[int]) -> None:
            await self._dirty(g, volume, regions)

        order = WriteOrder(journal, on_full, on_dirty,
                           delay_limit=self.cfg.delay_limit if self.cfg.journal_full == "delay" else 0.0,
                           activity=activity)
        order.dirty = {int(k): set(v) for k, v in g.dirty.items()}
        self.orders[g.name] = order
        for p in g.pairs:
            self._wrap(order, p.pvol, g.target)
        self._enforce_primary(g)
        if reopen and rec.unjournaled and State(g.state) in JOURNALING:
            self._journal_full(g, "after an unclean stop the journal had no room for the suspect extents")

    def _enforce_primary(self, g: Group) -> None:
        """What the state means for host writes, in one place: journaled in COPY/PAIR, tracked in
        the bitmap in PSUS/PSUE, refused (DATA PROTECT) when FENCED."""
        state = State(g.state)
        order = self.orders.get(g.name)
        g.fenced = state not in PRIMARY_WRITABLE
        if order is not None:
            order.journaling = state in JOURNALING
            order.fenced = g.fenced
        for p in g.pairs:
            self._lu(p.pvol, "P-VOL", g.target).held = g.fenced

    def _primary_event(self, g: Group, event: Event, error: str = "") -> None:
        """A state change of a primary group: through the table, enforced, persisted."""
        g.apply(event, error)
        self._enforce_primary(g)
        self.save()

    @staticmethod
    async def _quiesce(luns: list[LogicalUnit]) -> None:
        """Wait for the host writes already under way on these LUs (each holds its range from its
        write-protect check on): once a volume is write-protected (an S-VOL) or journaled (a P-VOL),
        one that started before would land after the copy read or wrote its region, unjournaled,
        and leave S-VOL and P-VOL differing in PAIR. Writes that start meanwhile wait a moment."""
        for lu in luns:
            async with lu.ranges.locked(0, lu.num_blocks * lu.block_size):
                pass

    def _wrap(self, order: WriteOrder, pvol: int, target: str) -> None:
        lu = self._lu(pvol, "P-VOL", target)
        if not isinstance(lu.backstore, JournaledStore):  # (an SSWS tracker hands its held writes over)
            lu.backstore = JournaledStore(self._inner(lu), order, pvol)

    def _unwrap(self, pvol: int, target: str) -> None:
        lu = self._lu(pvol, "P-VOL", target)
        if isinstance(lu.backstore, JournaledStore):
            lu.backstore = lu.backstore.inner

    def _journal_full(self, g: Group, why: str) -> None:
        log.error("group %s: %s; pairs suspended, changes tracked in a bitmap", g.name, why)
        self._primary_event(g, Event.FAIL, why)

    async def _dirty(self, g: Group, volume: int, regions: set[int]) -> None:
        """Regions written while suspended, made durable before the write that dirties them (off
        the event loop: two fsyncs per new region)."""
        g.dirty[str(volume)] = sorted(set(g.dirty.get(str(volume), [])) | regions)
        await self.save_async()

    async def prepare_primary(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        name, pvol, pjnl = str(params["group"]), int(params["pvol"]), int(params["pjnl"])
        sjnl, svol = int(params["sjnl"]), int(params["svol"])
        target, peer_target = str(params.get("target", "")), str(params.get("peer_target", ""))
        async with self.lock(name):
            g = self.groups.get(name)
            lu = self._lu(pvol, "P-VOL", g.target if g is not None else target)
            used = self._used_luns()
            mine = None if g is None or g.role != "primary" or g.peer != peer or g.pjnl != pjnl else \
                next((p for p in g.pairs if p.pvol == pvol and p.svol == svol), None)
            if g is not None and mine is not None and mine.state == State.COPY:
                return self._prepared(g, lu)  # a repeat: the first reply was lost, the pair still copies
            if g is not None and mine is not None and allowed(g.state, Event.CREATE):
                # The secondary asks for a pair this array has: it never formed it there (the first
                # reply was lost, and a later "copy done" report promoted it here). Copy it again, whole.
                log.warning("group %s: %s asks again for pair %d -> %d, which it never formed; copying it anew",
                            name, peer, pvol, svol)
                mine.state = State.COPY.value
                return await self._start_copy(g, lu)
            if g is None:
                self._lu(pjnl, "primary journal", target)
                t = self._tname(target)
                if (t, pvol) in used or (t, pjnl) in used or pvol == pjnl:
                    raise RemoteError(Status.BAD_REQUEST, f"LUN {pvol} or {pjnl} is already used by a group")
                g = Group(name, "primary", peer, pjnl, sjnl, [Pair(pvol, svol, "COPY", lu.num_blocks * lu.block_size)],
                          state=State.SMPL.value, target=target, peer_target=peer_target)
                await self._attach_primary(g, reopen=False)
                self.groups[name] = g
            else:
                if g.role != "primary" or g.peer != peer or g.pjnl != pjnl or g.target != target:
                    raise RemoteError(Status.BAD_REQUEST, f"group {name} exists with other roles or journals")
                if not allowed(g.state, Event.CREATE):
                    raise RemoteError(Status.WRONG_STATE, f"group {name} is {g.state}: no pair can be added")
                if pvol in g.pvols() or (self._tname(g.target), pvol) in used:
                    raise RemoteError(Status.BAD_REQUEST, f"LUN {pvol} is already paired")
                g.pairs.append(Pair(pvol, svol, "COPY", lu.num_blocks * lu.block_size))
                self._wrap(self.orders[name], pvol, g.target)
            return await self._start_copy(g, lu)

    async def _start_copy(self, g: Group, lu: LogicalUnit) -> dict[str, Any]:
        """The pair's P-VOL is wrapped in the journal: CREATE (journaling from here on, before any
        wait: a new group is SMPL, i.e. fenced, until then), the journal position the secondary
        acquires from, then the P-VOL ready for the copy. A failure after CREATE is answered like a
        lost reply: the pair copies, and a repeated paircreate is answered as the first."""
        self._primary_event(g, Event.CREATE)
        prepared = self._prepared(g, lu)
        # writes that started on the plain store before the wrap land first (the copy must see
        # them); then what the copy reads of writes from before the pair must be durable here:
        # they are neither journaled nor in the activity log, so a power cut would keep them on
        # the S-VOL only
        await self._quiesce([lu])
        await self._inner(lu).flush()
        return prepared

    def _prepared(self, g: Group, lu: LogicalUnit) -> dict[str, Any]:
        """prepare_primary's answer: where the new pair's journal stands, and the P-VOL's size."""
        j = self.journals[g.name]
        return {"epoch": j.sb.epoch, "head": j.sb.head, "end": j.sb.end, "block_size": j.sb.block_size,
                "in_pos": j.ptr.in_pos, "next_seq": j.ptr.next_seq, "size": lu.num_blocks * lu.block_size}

    def _primary(self, name: str, peer: str | None = None) -> Group:
        """The primary group ``name``; with ``peer``, only if that peer is the group's secondary."""
        g = self.groups.get(name)
        if g is None or g.role != "primary":
            raise RemoteError(Status.NOT_FOUND, f"no primary group {name} on {self.array.name}")
        if peer is not None and peer != g.peer:
            raise RemoteError(Status.NOT_ALLOWED, f"group {name} on {self.array.name} is paired with {g.peer}, "
                                                  f"not {peer}")
        return g

    async def primary_status(self, name: str, at_pos: int | None = None) -> dict[str, Any]:
        g = self._primary(name)
        j = self.journals[name]
        await j.make_durable()  # the secondary acquires up to the durable point only
        st: dict[str, Any] = dict(j.status())
        st.update({"group": name, "state": g.state, "error": g.error, "now_ns": time.time_ns(), "role": "primary"})
        st["before_fence"] = g.before_fence
        st["dirty_regions"] = sum(len(v) for v in g.dirty.values())
        if g.copy_from_seq:
            st["copy_from"] = {"pos": g.copy_from_pos, "seq": g.copy_from_seq, "restarted": g.copy_restarted}
        if at_pos is not None and at_pos != j.committed_pos:
            hdr = decode_header(await j.store.read(at_pos, HEAD_LBA_BYTES))
            st["time_at_pos_ns"] = hdr.time_ns if hdr is not None and not (hdr.flags & 1) else st["oldest_time_ns"]
        return st

    async def purge(self, name: str, upto_pos: int, upto_seq: int, peer_checked: bool = False) -> dict[str, Any]:
        """Free journal entries before ``upto_pos``/``upto_seq`` (JOURNAL_PURGE, or the secondary's
        ``repl.purge``). The position must be the entry boundary that holds ``upto_seq``; a host's
        request (not ``peer_checked``) is also held to what the secondary reports restored, so no
        command device can make the primary drop entries the secondary still needs."""
        g = self._primary(name)
        j = self.journals[name]
        if not peer_checked:
            view = await self._call(g, "repl.peer_view", {"group": name})
            if view.get("role") != "secondary" or int(view["restored_seq"]) < upto_seq:
                raise CommandError(ResultStatus.WRONG_STATE,
                                   f"purge to {upto_seq} refused: {g.peer} has restored up to "
                                   f"{int(view.get('restored_seq', 0)) - 1} (role {view.get('role')})")
        order = self.orders[name]
        # before journal-out moves: the purged entries' volume writes done and durable
        await order.make_volumes_durable(min(upto_seq, j.committed_seq + 1))
        async with order.lock:
            if upto_seq <= j.ptr.out_seq:
                return j.status()  # nothing to free (already purged, or a journal restarted past it)
            if upto_seq != j.committed_seq + 1:
                hdr = decode_header(await j.store.read(upto_pos, HEAD_LBA_BYTES))
                if hdr is None or hdr.seq != upto_seq or hdr.epoch != j.sb.epoch:
                    raise CommandError(ResultStatus.BAD_PARAMETER,
                                       f"purge: ring position {upto_pos} does not hold entry {upto_seq}")
            await j.purge(upto_pos, upto_seq)
            g.out_pos, g.out_seq = j.ptr.out_pos, j.ptr.out_seq
            self.save()
        return j.status()


    async def _primary_split(self, name: str) -> dict[str, Any]:
        g = self._primary(name)
        order = self.orders[name]
        async with order.lock:
            if g.state != State.PSUS:  # a retry after a lost reply finds it split already
                self._primary_event(g, Event.SPLIT)
        return {"state": g.state}

    async def _primary_resync(self, name: str) -> dict[str, Any]:
        """Journal again from now on and hand the secondary the regions written while suspended.

        The regions stay recorded here until the secondary reports its copy done
        (``repl.copy_done``): if this reply is lost, the secondary's retry gets them again."""
        g = self._primary(name)
        order = self.orders[name]
        j = self.journals[name]
        async with order.lock:
            if g.state != State.COPY and not allowed(g.state, Event.RESYNC):  # before any side effect
                raise CommandError(ResultStatus.WRONG_STATE, f"group {name} is {g.state} here: no resync")
            await order.drain()  # bitmap-tracked writes in flight land before their regions are handed out
            if g.state != State.COPY or not g.copy_from_seq:
                await order.flush_volumes()  # the copy reads bitmap-tracked writes: durable first
                await self._unsent_to_bitmap(g, j, order)
                restarted = j.recover_from_failure()
                if restarted:
                    g.out_pos, g.out_seq = j.ptr.out_pos, j.ptr.out_seq
                g.copy_from_pos, g.copy_from_seq, g.copy_restarted = j.ptr.in_pos, j.ptr.next_seq, restarted
                if g.state != State.COPY:
                    self._primary_event(g, Event.RESYNC)
                self.save()
            # a retry (the first reply lost) gets the same starting point: the secondary reads from there
            dirty = {str(k): sorted(v) for k, v in order.dirty.items()}
            return {"dirty": dirty, "in_pos": g.copy_from_pos, "next_seq": g.copy_from_seq, "region": REGION,
                    "journal_restarted": g.copy_restarted}

    async def _unsent_to_bitmap(self, g: Group, j: PrimaryJournal, order: WriteOrder) -> None:
        """At a resync, entries the secondary has not taken (it restored and purged what it had
        before asking) go to the bitmap: the copy brings their regions. Replayed after the copy
        they would put older data over regions whose later writes only the bitmap holds (writes
        while suspended); and a failed journal restarts empty, which would lose them."""
        if j.ptr.out_seq == j.committed_seq + 1:
            return
        for e in await j.scan(j.ptr.out_pos, j.ptr.out_seq, j.committed_pos):
            await order.mark(e.volume, e.offset, e.length)
        await order.make_volumes_durable()  # as for any purge: no redo will cover them any more
        await j.purge(j.committed_pos, j.committed_seq + 1)
        g.out_pos, g.out_seq = j.ptr.out_pos, j.ptr.out_seq

    async def _primary_copy_done(self, g: Group) -> dict[str, Any]:
        """The secondary finished its copy: the regions it copied are no longer needed here."""
        order = self.orders[g.name]
        async with order.lock:
            if g.state == State.COPY:
                order.dirty = {}
                g.dirty = {}
                self._primary_event(g, Event.COPY_DONE)
        return {"state": g.state}

    async def _primary_delete(self, name: str) -> dict[str, Any]:
        g = self._primary(name)
        async with self.orders[name].lock:
            for p in g.pairs:
                self._unwrap(p.pvol, g.target)
        del self.groups[name]
        self.journals.pop(name, None)
        self.orders.pop(name, None)
        self.save()
        return {"state": "SMPL"}

    async def _fence(self, name: str, why: str) -> dict[str, Any]:
        """Stop host writes to the P-VOLs (takeover by the peer): they answer DATA PROTECT from now on.
        Taken under the write-order lock, so every write already acknowledged is in the journal."""
        g = self._primary(name)
        order = self.orders[name]
        async with order.lock:
            g.awaiting_confirm = False  # the peer has spoken: no restart confirmation may lift this
            self._primary_event(g, Event.FENCE, why or f"{g.peer} is taking over (swap)")
        await order.drain()  # writes ordered before the fence are committed first
        await order.answered()  # and answered (a FUA flush may still run): nothing is answered after this
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
                regions.setdefault(str(e.volume), set()).update(
                    range(e.offset // REGION, (e.offset + max(e.length, 1) - 1) // REGION + 1))
                if e.rejournaled:  # P-VOL content copied after an unclean stop, not a host write
                    continue
                entries += 1
                n_bytes += e.length
                first_ns = first_ns or e.time_ns
                last_ns = e.time_ns
        dirty_regions = sum(len(v) for v in g.dirty.values())
        return {"entries": entries, "bytes": n_bytes, "first_ns": first_ns, "last_ns": last_ns,
                "dirty_regions": dirty_regions, "regions": {k: sorted(v) for k, v in regions.items()},
                "region": REGION}


"""Takeover and swap (spec Fig. 17-21): this secondary becomes the writable side."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..remote.api import LinkError, RemoteError
from .journal import (
    Superblock,
    encode_superblock,
)
from .model import Group, Pair, _wrong_state, merge_ranges
from .states import Event, State, allowed
from .primary import REGION
from .secondary_role import SecondaryRole
from .tracked import TrackedStore

log = logging.getLogger("storaged.repl")


class TakeoverRole(SecondaryRole):
    # --- takeover and swap (Fig. 17-21) ----------------------------------------------------------

    async def takeover(self, name: str, dry_run: bool) -> dict[str, Any]:
        """Make this secondary the writable side: a swap when the primary answers, SSWS when not."""
        g = self._group(name)
        if g.role != "secondary":
            raise CommandError(ResultStatus.BAD_PARAMETER, f"group {name} is already primary here; nothing to take over")
        if not allowed(g.state, Event.TAKEOVER):
            raise _wrong_state(g, "takeover", ("PAIR", "PSUE", "PSUS"))
        if not g.svol_consistent():
            left = sum(len(v) for v in g.copy_regions.values())
            why = (f"a copy from {g.peer} was interrupted ({left} ranges left)" if left else
                   f"the copy from {g.peer} is not restored past its end yet, or {g.peer} suspended during it")
            raise CommandError(ResultStatus.WRONG_STATE, f"group {name}'s S-VOLs are inconsistent: {why}; resync first")
        try:
            st = await self._link(g).call("repl.journal_status", {"group": name}, timeout=3.0)
            reachable = True
        except RemoteError as exc:  # the primary answered: it is up, and said no
            raise CommandError(ResultStatus.FAILED, f"{g.peer} answered but refused the status request "
                                                    f"({exc.message}); not taking over") from None
        except LinkError:
            st, reachable = self._last_primary.get(name, {}), False
        else:
            self._last_primary[name] = {**st, "contact_ns": time.time_ns()}
        # a swap assumes both sides equal once the journal is restored: only from a primary in PAIR
        # (one that suspended journals nothing more; its bitmap holds writes this array never gets)
        variant = "swap" if reachable and g.state == State.PAIR and st.get("state") == State.PAIR else "svol-takeover"
        plan = {"group": name, "variant": variant, "primary_reachable": reachable,
                **takeover_risk(g.read_seq, g.restored_seq, st, reachable, time.time_ns())}
        if dry_run:
            return plan
        async with self.lock(name):
            if variant == "swap" and not await self._swap(g):
                variant = plan["variant"] = "svol-takeover"  # it suspended meanwhile: fenced, not equal
            if variant != "swap":
                await self.restore(g)
                if reachable and not g.fenced:  # the primary answers (PSUS/PSUE): stop its hosts first
                    await self._call(g, "repl.fence", {"group": name, "why": f"{self.array.name} took over"})
                    g.fenced = True
                g.apply(Event.TAKEOVER, "" if reachable else "takeover while the primary was unreachable")
                g.writable = True
                self._protect(g)
                self._track_writes(g)
                self.save()
                log.warning("group %s: takeover: S-VOLs writable (SSWS); writes tracked for a reverse resync", name)
        return {**plan, "state": self.groups[name].state, "role": self.groups[name].role}

    def _track_writes(self, g: Group) -> None:
        for p in g.pairs:
            lu = self._lu(p.svol, "S-VOL", g.target)
            if not isinstance(lu.backstore, TrackedStore):
                lu.backstore = TrackedStore(lu.backstore, lambda off, n, v=p.pvol: self._sdirty(g, v, off, n))

    def _sdirty(self, g: Group, volume: int, offset: int, length: int) -> None:
        regions = set(g.dirty.get(str(volume), []))
        new = set(range(offset // REGION, (offset + max(length, 1) - 1) // REGION + 1)) - regions
        if new:
            g.dirty[str(volume)] = sorted(regions | new)
            self.save()

    async def _become_primary(self, g: Group, event: Event, extra: dict[str, Any] | None = None) -> Group:
        """This array's S-VOLs become P-VOLs journaling into its (old secondary) journal LUN
        (``event``: SWAP with both sides equal, or REVERSE after an SSWS takeover). The request
        that makes the old primary its secondary (``demote``, plus ``extra``) is in the same table
        save as the new role: a crash right after it cannot leave two primaries with no one to ask."""
        name = g.name
        pairs = [Pair(pvol=p.svol, svol=p.pvol, state=p.state, size=p.size, copied=p.size) for p in g.pairs]
        ng = Group(name, "primary", g.peer, pjnl=g.sjnl, sjnl=g.pjnl, pairs=pairs, state=g.state,
                   target=g.target, peer_target=g.peer_target, term=g.term + 1)
        ng.apply(event)
        self.secondary_journal.pop(name, None)
        await self._attach_primary(ng, reopen=False)
        j = self.journals[name]
        # "svols": the pairs that stay, in the old primary's volumes (it may hold a half-formed one)
        ng.demote = {"group": name, "pjnl": ng.pjnl, "epoch": j.sb.epoch, "head": j.sb.head, "end": j.sb.end,
                     "block_size": j.sb.block_size, "in_pos": j.ptr.in_pos, "next_seq": j.ptr.next_seq,
                     "term": ng.term, "svols": [p.svol for p in ng.pairs], **(extra or {})}
        self.groups[name] = ng
        self.save()
        return ng

    async def _demote_old_primary(self, ng: Group) -> None:
        """Tell the old primary (fenced: it takes no host writes) to become this array's
        secondary (``ng.demote``, persisted with the new role). If the request or its reply is
        lost, a task repeats it (also after a restart) until the old primary answers, so the pair
        never stays with two primaries."""
        request = ng.demote
        try:
            await self._call(ng, "repl.become_secondary", request)
        except CommandError as exc:
            ng.error = f"{ng.peer} not yet told to become the secondary ({exc}); retrying"
            log.warning("group %s: %s", ng.name, ng.error)
            self._spawn_demote(ng)
            return
        ng.demote = {}
        self.save()

    def _spawn_demote(self, g: Group) -> None:
        """One repeating task per group (a restart or a second failure does not start another)."""
        key = f"demote:{g.name}"
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.get_running_loop().create_task(self._repeat_demote(g), name=f"repl-{key}")

    async def _repeat_demote(self, g: Group) -> None:
        """Repeat the persisted request with backoff until answered, or moot (see _demote_moot)."""
        delay = 0.05
        while self.groups.get(g.name) is g and g.demote:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if self.groups.get(g.name) is not g or not g.demote:
                return  # the roles moved on meanwhile
            try:
                await self._call(g, "repl.become_secondary", g.demote)
            except CommandError as exc:
                if exc.status != ResultStatus.UNREACHABLE and await self._demote_moot(g):
                    g.demote = {}  # the peer is past this swap (a later swap, a takeover, a delete)
                    self.save()
                    return
                g.error = f"{g.peer} not yet told to become the secondary ({exc}); retrying"
                continue
            g.demote = {}
            g.error = ""
            self.save()
            log.warning("group %s: %s is the secondary now", g.name, g.peer)

    async def _demote_moot(self, g: Group) -> bool:
        """The old primary refused the request: is there nothing left to tell it (it has no such
        group, or is no primary of it any more)? No answer counts as no."""
        try:
            view = await self._call(g, "repl.peer_view", {"group": g.name})
        except CommandError as exc:
            return "no group" in str(exc)
        return view.get("role") != "primary"

    def _already_secondary(self, peer: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """A repeated ``repl.become_secondary`` this array already acted on (the reply was lost)."""
        g = self.groups.get(str(params.get("group")))
        if g is not None and g.role == "secondary" and g.peer == peer and g.epoch == int(params["epoch"]) \
                and g.term == int(params.get("term", g.term)):
            return {"group": g.name, "state": g.state, "role": "secondary"}
        return None

    async def _swap(self, g: Group) -> bool:
        """Swap roles with a primary in PAIR; False (the primary fenced, everything it journaled
        acquired) if it turns out to have suspended before the fence: then sides differ by its bitmap."""
        name = g.name
        final = await self._call(g, "repl.fence", {"group": name})  # no more host writes on the old primary
        await self.acquire(g, final["journal_in"])
        if final.get("before_fence", State.PAIR) != State.PAIR or final.get("dirty_regions"):
            g.fenced = True
            return False
        await self.restore(g)
        if g.restored_seq != final["next_seq"]:  # Fig. 19 S1905: restore must be complete before the swap
            raise CommandError(ResultStatus.FAILED, f"restore incomplete ({g.restored_seq} of {final['next_seq']})")
        await self.purge_primary(g)
        task = self._tasks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        await self._demote_old_primary(await self._become_primary(g, Event.SWAP))
        log.warning("group %s: swapped: this array is now the primary of %s", name, g.peer)
        return True

    async def resync_swap(self, name: str, force: bool) -> dict[str, Any]:
        """Reverse resync after an SSWS takeover (like ``pairresync -swaps``): this array becomes
        the primary and the old primary copies back only what differs."""
        g = self._group(name)
        if g.role != "secondary" or g.state != State.SSWS:
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
            trackers = {p.svol: t for p in g.pairs
                        if isinstance(t := self._lu(p.svol, "S-VOL", g.target).backstore, TrackedStore)}
            for t in trackers.values():
                await t.hold()  # writes in flight land (and are flushed below); new ones wait
            switched = False
            try:
                copy = await self._reverse(g, lost)
                switched = True
            finally:
                for svol, t in trackers.items():  # held writes go on, journaled if the switch was made
                    t.hand_over(self._lu(svol, "P-VOL", g.target).backstore if switched else None)
        return {"group": name, "state": "COPY", "role": "primary",
                "copied_regions": sum(len(v) for v in copy.values())}

    async def _reverse(self, g: Group, lost: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
        """Under the group lock with host writes held: fence the old primary, make this array's
        volumes durable P-VOLs, tell the old primary what to copy back."""
        name = g.name
        region = int(lost["region"])
        regions: dict[str, set[int]] = {k: set(v) for k, v in lost["regions"].items()}
        for vol, regs in g.dirty.items():
            regions.setdefault(vol, set()).update(regs)
        await self._call(g, "repl.fence", {"group": name, "why": f"{self.array.name} took over"})
        sizes = {p.pvol: p.size for p in g.pairs}
        svol_of = {p.pvol: p.svol for p in g.pairs}
        unpaired = sorted(int(v) for v in regions if int(v) not in svol_of)
        if unpaired:  # a pair the old primary set up and this array never confirmed: nothing to copy back
            log.warning("group %s: %s reports writes on P-VOL(s) %s, which are not paired here; not copied back",
                        name, g.peer, unpaired)
        copy = {str(svol_of[int(v)]): [(r * region, min(region, sizes[int(v)] - r * region)) for r in sorted(rs)]
                for v, rs in regions.items() if int(v) in svol_of}
        g.dirty = {}
        for p in g.pairs:  # what was written here in SSWS must survive a crash during the copy back
            await self._inner(self._lu(p.svol, "S-VOL", g.target)).flush()
        await self._demote_old_primary(await self._become_primary(g, Event.REVERSE, {"copy_regions": copy}))
        return copy


    async def _become_secondary(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        """Swap (Fig. 20): this array stops journaling and turns its group into the secondary of
        ``peer``, whose new primary journal is described in ``params``."""
        name = str(params["group"])
        async with self.lock(name):  # a repeat and its stalled original: one acts, the other sees it done
            return await self._become_secondary_locked(peer, name, params)

    async def _become_secondary_locked(self, peer: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        done = self._already_secondary(peer, params)
        if done is not None:
            return done
        g = self._primary(name)
        # a request from before terms (an older storaged) carries none: it is taken as current
        term = int(params["term"]) if "term" in params else g.term + 1
        if term <= g.term:
            raise CommandError(ResultStatus.WRONG_STATE, f"stale request: group {name} is at swap {g.term} here, "
                                                         f"the request is of swap {term}")
        # The new primary's S-VOLs; a pair set up here that it never confirmed (a lost paircreate
        # reply) is dropped: its volume is simple again. A request from an older storaged names none.
        staying = {int(v) for v in params["svols"]} if "svols" in params else {p.pvol for p in g.pairs}
        order = self.orders[name]
        async with order.lock:
            for p in g.pairs:
                self._unwrap(p.pvol, g.target)
                self._lu(p.pvol, "S-VOL", g.target).held = p.pvol in staying
            order.journaling = False
        dropped = [p.pvol for p in g.pairs if p.pvol not in staying]
        if dropped:  # their writes were covered by the journal and its activity log, gone with the role
            await order.flush_volumes(set(dropped))
        self.journals.pop(name, None)
        self.orders.pop(name, None)
        if dropped:
            log.warning("group %s: pair(s) of volume(s) %s never formed on %s: dropped (simple volumes)",
                        name, dropped, peer)
        pairs = [Pair(pvol=p.svol, svol=p.pvol, state=p.state, size=p.size, copied=p.size)
                 for p in g.pairs if p.pvol in staying]
        ng = Group(name, "secondary", peer, pjnl=int(params["pjnl"]), sjnl=g.pjnl, pairs=pairs, state=g.state,
                   before_fence=g.before_fence, target=g.target, peer_target=g.peer_target,
                   epoch=int(params["epoch"]), head=int(params["head"]), end=int(params["end"]),
                   block_size=int(params["block_size"]), restored_pos=int(params["in_pos"]),
                   restored_seq=int(params["next_seq"]), read_pos=int(params["in_pos"]), read_seq=int(params["next_seq"]),
                   term=term)
        regions = params.get("copy_regions")
        if regions is not None:  # a reverse resync: copy these regions from the new primary first
            ng.apply(Event.REVERSE)
            for p in ng.pairs:
                p.copied = 0
                ng.copy_regions[str(p.pvol)] = merge_ranges([(int(a), int(b)) for a, b in regions.get(str(p.pvol), [])])
        else:
            ng.apply(Event.SWAP)
        jstore = self._inner(self._lu(ng.sjnl, "secondary journal", ng.target))
        await jstore.write(0, encode_superblock(name, ng.block_size, ng.head, ng.end, ng.epoch), fua=True)
        self.secondary_journal[name] = Superblock(name, ng.block_size, ng.head, ng.end, ng.epoch)
        self.groups[name] = ng
        self.save()
        log.warning("group %s: swapped: %s is now the primary, this array the secondary (%s)", name, peer, ng.state)
        self._spawn(ng)
        return {"group": name, "state": ng.state, "role": "secondary"}


def takeover_risk(read_seq: int, restored_seq: int, last: dict[str, Any], reachable: bool,
                  now_ns: int) -> dict[str, Any]:
    """What a takeover would still restore and what it may lose, with how old that knowledge is.

    Reachable: nothing is at risk; everything journaled is restored first. Unreachable: the
    entries the primary had journaled at the last contact and this array never acquired are
    known lost; whatever the primary acknowledged after that contact is unknown, and the age of the
    contact says how long that window is."""
    unrestored = read_seq - restored_seq
    primary_next = int(last.get("next_seq", read_seq))
    unread = max(0, primary_next - read_seq)
    contact_ns = last.get("contact_ns")
    age = round((now_ns - int(contact_ns)) / 1e9, 3) if contact_ns else None
    if reachable:
        return {"to_restore": {"entries": unrestored + unread},
                "at_risk": {"entries": 0, "known": True, "last_contact_age_s": 0.0, "note": ""}}
    if age is None:
        note = "no contact with the primary since this array started: what it acknowledged is unknown"
    else:
        note = (f"{unread} entries journaled on the primary at the last contact, {age} s ago, were never "
                f"acquired here; writes the primary acknowledged after that contact are unknown")
    return {"to_restore": {"entries": unrestored},
            "at_risk": {"entries": unread, "known": False, "last_contact_age_s": age,
                        "known_as_of_ns": last.get("now_ns"), "note": note}}

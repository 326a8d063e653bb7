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
from .model import Group, Pair, _wrong_state
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
            if not isinstance(lu.backstore, TrackedStore):
                lu.backstore = TrackedStore(lu.backstore, lambda off, n, v=p.pvol: self._sdirty(g, v, off, n))

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
            if isinstance(lu.backstore, TrackedStore):
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

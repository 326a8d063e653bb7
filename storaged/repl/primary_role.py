"""The primary side of a journal group: journaling P-VOL writes, status, purge, split, resync,
delete and fence as the secondary asks for them over the remote link."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..remote.api import RemoteError
from ..remote.protocol import Status
from .core import ReplicationCore
from .journal import (
    HEAD_LBA_BYTES,
    PrimaryJournal,
    decode_header,
)
from .model import Group, Pair
from .primary import REGION, JournaledStore, WriteOrder

log = logging.getLogger("storaged.repl")


class PrimaryRole(ReplicationCore):
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


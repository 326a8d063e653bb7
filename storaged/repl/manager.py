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
import time
from typing import Any

from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..remote.api import LinkError, RemoteError
from ..remote.protocol import Status
from .journal import (
    Superblock,
    decode_header,
)
from .model import Group, _wrong_state
from .takeover import TakeoverRole

log = logging.getLogger("storaged.repl")


class Replication(TakeoverRole):
    """Journal groups of one array: the facade the command devices and the remote link call."""

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


    # --- commands common to both sides ----------------------------------------------------------

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



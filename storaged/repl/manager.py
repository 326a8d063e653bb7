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
from collections.abc import Awaitable, Callable
from typing import Any

from ..logfmt import LOG_FIELDS
from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from ..remote.api import LinkError, RemoteError
from ..remote.protocol import Status
from .journal import (
    Superblock,
    decode_header,
)
from .model import Group, _wrong_state, merge_ranges
from .states import PRIMARY_WRITABLE, Event, State, allowed
from .takeover import TakeoverRole

log = logging.getLogger("storaged.repl")


class Replication(TakeoverRole):
    """Journal groups of one array: the facade the command devices and the remote link call."""

    # --- start-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload the table after a restart: reopen primary journals (redoing their tail on the
        P-VOLs), protect S-VOLs, and resume the secondary's work. A primary that could take host
        writes is fenced until its peer confirms it is still the primary (``restart_fence``):
        while it was down the peer may have taken over, and a write accepted now would be lost."""
        self._load()
        for g in self.groups.values():
            if g.role == "primary":
                await self._attach_primary(g, reopen=True)
                if self.cfg.restart_fence and State(g.state) in PRIMARY_WRITABLE:
                    g.awaiting_confirm = True
                    self._primary_event(g, Event.FENCE, f"restarted: host writes wait until {g.peer} confirms "
                                                        "this array is still the primary (or hostctl pairrelease)")
                if g.awaiting_confirm:
                    self._spawn_confirm(g)
                if g.demote:  # a swap whose last message the old primary has not answered
                    self._spawn_demote(g)
            else:
                self.secondary_journal[g.name] = Superblock(g.name, g.block_size, g.head, g.end, g.epoch)
                self._protect(g)
                if g.read_seq > g.restored_seq and not (g.state == State.COPY and g.copying()):
                    # a restore batch a crash interrupted left the S-VOLs torn: finish it now,
                    # from this array's own journal, before anything reads them as consistent
                    await self.restore(g)
                if g.state == State.SSWS:
                    self._track_writes(g)
                self._spawn(g)
        self.started = True

    def _spawn_confirm(self, g: Group) -> None:
        key = f"confirm:{g.name}"
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.get_running_loop().create_task(self._confirm_role(g), name=f"repl-{key}")

    async def _confirm_role(self, g: Group) -> None:
        """Ask the peer, until it answers, whether this array is still the group's primary; only a
        yes lifts the restart fence. A peer that took over keeps it (the operator decides)."""
        LOG_FIELDS.set({"group": g.name, "peer": g.peer})  # this task's own context
        delay = 0.05
        while self.groups.get(g.name) is g and g.awaiting_confirm:
            if g.demote:  # the old primary is still to be told it is the secondary: ask after that
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            try:
                view = await self._call(g, "repl.peer_view", {"group": g.name}, timeout=5.0)
            except CommandError as exc:
                g.error = g.error.split(" [")[0] + f" [last try: {exc}]"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            order = self.orders.get(g.name)
            if order is None or self.groups.get(g.name) is not g:
                return  # deleted or swapped meanwhile
            async with order.lock:
                if not g.awaiting_confirm or self.groups.get(g.name) is not g:
                    return
                g.awaiting_confirm = False
                if view.get("role") == "secondary" and view.get("state") != State.SSWS:
                    self._primary_event(g, Event.CONFIRM)
                    log.warning("group %s: %s confirmed this array as the primary; host writes accepted (%s)",
                                g.name, g.peer, g.state)
                else:
                    self._primary_event(g, Event.FENCE, f"{g.peer} is {view.get('role')} in {view.get('state')}: "
                                                        "it took over while this array was down")
                    log.error("group %s: stays fenced: %s", g.name, g.error)
            return

    async def release(self, name: str) -> dict[str, Any]:
        """An operator lifts a fence by hand (``hostctl pairrelease``), e.g. when the peer is lost
        for good: host writes resume, journaled or tracked as before the fence. Only for a fence
        this array set itself on restart, or one its peer set; the operator owns the risk."""
        g = self._group(name)
        if g.role != "primary" or g.state != State.FENCED:
            raise _wrong_state(g, "pairrelease", ("FENCED",))
        async with self.orders[name].lock:
            g.awaiting_confirm = False
            self._primary_event(g, Event.RELEASE, f"released by an operator from: {g.error}")
        log.warning("group %s: fence released by an operator; host writes accepted (%s)", name, g.state)
        return {"group": name, "state": g.state}

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._tasks.clear()
        for name, order in list(self.orders.items()):  # clean stop: durable, activity log empty
            try:
                await order.close()
            except Exception:  # noqa: BLE001 - the next start recovers as after a crash
                log.exception("group %s: clean close of the journal failed", name)

    # --- remote link calls (the secondary drives the primary) -----------------------------------

    async def handle_call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A call from a peer array. Every method but the two that create or look up a group by
        themselves acts only on a group whose peer is the caller (one peer cannot purge, fence or
        delete another pair's group)."""
        if not self.started:  # the link serves peers before start-up has reopened the journals
            raise RemoteError(Status.UNAVAILABLE, f"replication on {self.array.name} is starting; try again")
        try:
            if method == "repl.prepare_primary":
                return await self.prepare_primary(peer, params)
            if method == "repl.forward":
                return await self._forwarded(peer, str(params["op"]), str(params["group"]), params)
            if method == "repl.peer_view":
                return self._peer_view(peer, str(params["group"]))
            if method == "repl.become_secondary" and (done := self._already_secondary(peer, params)) is not None:
                return done
            handler = _PRIMARY_CALLS.get(method)
            if handler is None:
                raise RemoteError(Status.BAD_REQUEST, f"unknown method {method!r}")
            g = self._primary(str(params["group"]), peer)
            return await handler(self, g, params)
        except CommandError as exc:
            raise RemoteError(Status.WRONG_STATE if exc.status == ResultStatus.WRONG_STATE else Status.BAD_REQUEST,
                              str(exc)) from None
        except (KeyError, ValueError, TypeError) as exc:
            raise RemoteError(Status.BAD_REQUEST, f"{method}: bad parameters: {exc}") from None

    def _peer_view(self, peer: str, name: str) -> dict[str, Any]:
        """This array's side of a group, as its peer asks for it: a restarted primary confirms its
        role with it, and a host's JOURNAL_PURGE on the primary is held to what is restored here."""
        g = self.groups.get(name)
        if g is None:
            raise RemoteError(Status.NOT_FOUND, f"no group {name} on {self.array.name}")
        if g.peer != peer:
            raise RemoteError(Status.NOT_ALLOWED, f"group {name} on {self.array.name} is paired with {g.peer}")
        return {"group": name, "role": g.role, "state": g.state, "restored_pos": g.restored_pos,
                "restored_seq": g.restored_seq}

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
                entry["svol_consistent"] = g.svol_consistent()
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
            hdr = decode_header(await self._inner(self._lu(g.sjnl, "secondary journal", g.target)).read(g.restored_pos, 512))
            oldest = hdr.time_ns if hdr is not None else 0
        elif st["next_seq"] > g.read_seq:
            oldest = st.get("time_at_pos_ns") or st.get("oldest_time_ns", 0)
        view["lag_seconds"] = round(max(0, st["now_ns"] - oldest) / 1e9, 3) if oldest else 0.0
        view["primary_next_seq"] = st["next_seq"]
        return view

    async def _forwarded(self, peer: str, op: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """A pair command the primary received from a host and passed on: the secondary runs it,
        since it drives the pair (so ``pairsplit`` works from either side, as with HORCM)."""
        g = self.groups.get(name)
        if g is None or g.role != "secondary":
            raise RemoteError(Status.NOT_FOUND, f"no secondary group {name} on {self.array.name}")
        if g.peer != peer:
            raise RemoteError(Status.NOT_ALLOWED, f"group {name} on {self.array.name} is paired with {g.peer}")
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
        if not allowed(g.state, Event.SPLIT):
            raise _wrong_state(g, "pairsplit", ("PAIR",))
        if g.role == "primary":
            result = await self._call(g, "repl.forward", {"op": "split", "group": name, "rw": rw})
            return {**result, "via": g.peer}
        async with self.lock(name):
            if g.state == "PAIR":
                await self.acquire(g)  # take what the primary journaled up to now
                await self.restore(g)
                await self.purge_primary(g)
            await self._call(g, "repl.split", {"group": name})
            g.apply(Event.SPLIT)
            g.writable = rw
            self._protect(g)
            self.save()
        return {"group": name, "state": g.state, "writable": g.writable}

    async def resync(self, name: str, force: bool, swap: bool = False) -> dict[str, Any]:
        g = self._group(name)
        if swap or g.state == State.SSWS:
            return await self.resync_swap(name, force)
        if g.role != "secondary":
            raise CommandError(ResultStatus.BAD_PARAMETER, "run pairresync on the S-VOL's array (the secondary)")
        if not allowed(g.state, Event.RESYNC):
            raise _wrong_state(g, "pairresync", ("PSUS", "PSUE"))
        if g.writable and not force:
            raise CommandError(ResultStatus.WRONG_STATE,
                               f"group {name}'s S-VOLs were writable while split: a resync from {g.peer} would "
                               "discard whatever was written on them since; repeat with force to accept that")
        async with self.lock(name):
            if g.writable:  # split -rw: no host write may land on the S-VOLs once the copy starts
                luns = [self._lu(p.svol, "S-VOL", g.target) for p in g.pairs]
                for lu in luns:
                    lu.held = True
                try:
                    await self._quiesce(luns)
                except BaseException:
                    self._protect(g)  # still writable
                    raise
            try:
                await self.acquire(g)  # entries journaled before the suspension come first
                await self.restore(g)
                await self.purge_primary(g)
                info = await self._call(g, "repl.resync", {"group": name})
            except BaseException:
                self._protect(g)  # not resynced: as writable as before
                raise
            # the primary moved what this array had not taken to its bitmap (or restarted a failed
            # journal): the journal goes on from the copy's start, whatever reply was lost before
            g.read_pos = g.restored_pos = int(info["in_pos"])
            g.read_seq = g.restored_seq = int(info["next_seq"])
            region = int(info["region"])
            for p in g.pairs:
                dirty = info["dirty"].get(str(p.pvol), [])
                todo = [(r * region, min(region, p.size - r * region)) for r in dirty]
                if g.writable:  # force: everything that may differ on the S-VOL side too
                    todo = [(0, p.size)]
                left = g.copy_regions.get(str(p.pvol), [])  # a copy a suspension interrupted
                g.copy_regions[str(p.pvol)] = merge_ranges(todo + [(int(a), int(n)) for a, n in left])
            g.writable = False
            g.apply(Event.RESYNC)
            self._protect(g)
            self.save()
            self._spawn(g)
        return {"group": name, "state": g.state,
                "regions": {k: len(v) for k, v in g.copy_regions.items()}}

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
                    self._lu(p.svol, "S-VOL", g.target).held = False
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
                if st.get("state") in (State.PSUE, State.PSUS):  # its later writes are in its bitmap only
                    return {"result": "BROKEN", "seq": None, "restored_seq": g.restored_seq - 1,
                            "primary_state": st.get("state"),
                            "reason": f"the primary {g.peer} is {st.get('state')}: its writes since are in its "
                                      "bitmap only (pairresync first)"}
                seq = int(st["next_seq"]) - 1
            except CommandError:
                if time.monotonic() >= deadline:
                    return {"result": "TIMEOUT", "seq": None, "restored_seq": g.restored_seq - 1}
                await asyncio.sleep(0.2)
        while True:
            if g.state in (State.PSUE, State.SMPL) or name not in self.groups:
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




async def _status(r: Replication, g: Group, p: dict[str, Any]) -> dict[str, Any]:
    at = p.get("at_pos")
    return await r.primary_status(g.name, None if at is None else int(at))


#: calls the secondary of a group makes on its primary: (replication, group, params) -> reply
_PRIMARY_CALLS: dict[str, Callable[[Replication, Group, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "repl.journal_status": _status,
    "repl.purge": lambda r, g, p: r.purge(g.name, int(p["upto_pos"]), int(p["upto_seq"]), peer_checked=True),
    "repl.copy_done": lambda r, g, p: r._primary_copy_done(g),
    "repl.split": lambda r, g, p: r._primary_split(g.name),
    "repl.resync": lambda r, g, p: r._primary_resync(g.name),
    "repl.delete": lambda r, g, p: r._primary_delete(g.name),
    "repl.fence": lambda r, g, p: r._fence(g.name, str(p.get("why", ""))),
    "repl.become_secondary": lambda r, g, p: r._become_secondary(g.peer, p),
    "repl.lost_writes": lambda r, g, p: r._lost_writes(g.name, int(p["from_seq"])),
}

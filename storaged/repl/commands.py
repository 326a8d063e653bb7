"""The remote-copy commands of the command device (process numbers 16-25, docs/replication.md)."""

from __future__ import annotations

from typing import Any

from ..cmddev.commands import Process
from ..cmddev.dispatch import CommandDispatcher
from .manager import Replication


def register_replication(dispatcher: CommandDispatcher, repl: Replication) -> None:
    """One entry per command: each is a thin adapter from JSON parameters to the manager."""
    P = Process

    async def pair_create(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.pair_create(params, origin)

    async def pair_display(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.display(params.get("group"))

    async def pair_split(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.split(str(params["group"]), bool(params.get("rw", False)))

    async def pair_resync(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.resync(str(params["group"]), bool(params.get("force", False)),
                                 bool(params.get("swap", False)))

    async def pair_delete(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.delete(str(params["group"]))

    async def journal_status(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.journal_status(str(params["group"]))

    async def journal_acquire(params: dict[str, Any], origin: str) -> dict[str, Any]:
        g = repl._group(str(params["group"]))
        async with repl.lock(g.name):
            got = await repl.acquire(g, params.get("upto"))
        return {"acquired": got["acquired"], **(await repl.journal_status(g.name))}

    async def journal_restore(params: dict[str, Any], origin: str) -> dict[str, Any]:
        g = repl._group(str(params["group"]))
        async with repl.lock(g.name):
            n = await repl.restore(g)
        return {"restored": n, **(await repl.journal_status(g.name))}

    async def journal_purge(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.purge(str(params["group"]), int(params["upto_pos"]), int(params["upto_seq"]))

    async def pair_syncwait(params: dict[str, Any], origin: str) -> dict[str, Any]:
        seq = params.get("seq")
        return await repl.syncwait(str(params["group"]), None if seq is None else int(seq),
                                   float(params.get("timeout", 30.0)))

    async def takeover(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.takeover(str(params["group"]), bool(params.get("dry_run", False)))

    async def pair_release(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return await repl.release(str(params["group"]))

    for process, handler in [
        (P.PAIR_RELEASE, pair_release),
        (P.TAKEOVER, takeover),
        (P.PAIR_CREATE, pair_create), (P.PAIR_DISPLAY, pair_display), (P.PAIR_SPLIT, pair_split),
        (P.PAIR_RESYNC, pair_resync), (P.PAIR_DELETE, pair_delete), (P.JOURNAL_STATUS, journal_status),
        (P.JOURNAL_ACQUIRE, journal_acquire), (P.JOURNAL_RESTORE, journal_restore),
        (P.JOURNAL_PURGE, journal_purge), (P.PAIR_SYNCWAIT, pair_syncwait),
    ]:
        dispatcher.register(process, process.name, handler)

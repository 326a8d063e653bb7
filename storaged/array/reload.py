"""Config reload (SIGHUP): re-read, plan, prepare, then commit everything at once or nothing.

The plan (storaged/array/reload_plan.py) is checked against what the running array knows before
anything happens. Slow or fallible work (creating and growing LUN files, building logical units
and links) is done first, out of sight; the plan is checked again (a host may have logged in
meanwhile); then one synchronous step swaps it all in, so hosts never see half a reload. If
preparing fails, what was prepared is undone (new files removed, grown files cut back) and the
running configuration stays in force.

Hosts learn of changes the SCSI way: a new LUN queues REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh)
on the target's other LUNs, a grown LUN CAPACITY DATA HAS CHANGED (2Ah/09h) for every nexus.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from ..backstore.base import Backstore
from ..backstore.sparsefile import SparseFileBackstore
from ..config import ArrayConfig, ConfigError, parse_hostport
from ..configcheck import lun_path
from ..identity import lun_identity
from ..remote.link import PeerLink
from ..scsi.lu import LogicalUnit
from ..scsi.target import ScsiTarget
from .reload_plan import Facts, Key, ReloadPlan, make_plan

if TYPE_CHECKING:
    from .array import Array, LunRecord

log = logging.getLogger("storaged.reload")

_locks: WeakKeyDictionary[Array, asyncio.Lock] = WeakKeyDictionary()


def live_facts(array: Array) -> Facts:
    """What the plan must know about the running array: pairs, sessions, reservations, peers."""
    group_peers: dict[str, list[str]] = {}
    for g in array.repl.groups.values():
        group_peers.setdefault(g.peer, []).append(g.name)
    sessions: Counter[str] = Counter()
    if array.iscsi is not None:
        for proto in array.iscsi.connections:
            conn = proto.conn
            if conn.nexus is not None and conn.logged_in and not conn.closed:
                sessions[conn.nexus.target] += 1
    reserved: set[Key] = set()
    growable: set[Key] = set()
    users: dict[Key, frozenset[str]] = {}
    for key, rec in array.luns.items():
        if rec.peers:
            users[key] = frozenset(rec.peers)
        lu = rec.lu
        if lu is None:
            continue
        if lu.res2 is not None or lu.pr.registrations:
            reserved.add(key)
        if type(lu.backstore) is SparseFileBackstore:
            growable.add(key)
    return Facts(paired=array.repl._used_luns(), peer_users=users, sessions=dict(sessions),
                 reserved=frozenset(reserved), group_peers={k: tuple(v) for k, v in group_peers.items()},
                 growable=frozenset(growable))


@dataclass
class _Staged:
    """What a reload prepared and has not handed over yet (undone on failure)."""

    records: dict[Key, LunRecord] = field(default_factory=dict)
    stores: dict[Key, Backstore] = field(default_factory=dict)
    lus: dict[Key, LogicalUnit] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    #: (store, size before, size after)
    grown: list[tuple[SparseFileBackstore, int, int]] = field(default_factory=list)
    targets: dict[str, ScsiTarget] = field(default_factory=dict)
    links: dict[str, PeerLink] = field(default_factory=dict)
    #: handed over by the commit, closed after it
    closing_stores: list[Backstore] = field(default_factory=list)
    closing_links: list[PeerLink] = field(default_factory=list)
    dropped_peers: list[str] = field(default_factory=list)


def _resize_file(fd: int, size: int) -> None:
    os.ftruncate(fd, size)
    os.fsync(fd)  # the size is metadata: make it durable before a host writes past the old end


async def _prepare(array: Array, plan: ReloadPlan, staged: _Staged) -> None:
    from .array import LunRecord

    for t, old, new in plan.grown:
        rec = array.luns[(t.name, new.lun)]
        assert rec.lu is not None and isinstance(rec.lu.backstore, SparseFileBackstore)  # Facts.growable
        grown = rec.lu.backstore
        staged.grown.append((grown, old.size, new.size))
        await asyncio.to_thread(_resize_file, grown.fd, new.size)
    for t in plan.added_targets:
        staged.targets[t.name] = ScsiTarget(t.name, {}, tpgts=(t.portal_group_tag,))
    for t, lun in plan.added_luns:
        key = (t.name, lun.lun)
        rec = LunRecord(t, lun, lun_identity(array.uuid, t.name, lun.lun, lun.serial))
        staged.records[key] = rec
        if lun.map is not None:
            continue  # attached once its peer answers (Array._refresh_virtual)
        if lun.kind == "data":
            path = lun_path(array.cfg, lun)
            if not os.path.lexists(path):
                staged.created.append(path)
            store = await asyncio.to_thread(array._local_store, lun)  # creates, sizes and fsyncs the file
        else:
            store = array._local_store(lun)
        staged.stores[key] = store
        staged.lus[key] = array._new_lu(rec, store)
    for p in plan.added_peers:
        staged.links[p.name] = array.new_link(p)


async def _rollback(staged: _Staged) -> None:
    for store in staged.stores.values():
        try:
            await asyncio.to_thread(store.close)
        except OSError as exc:
            log.error("reload: undoing: closing a new LUN's store: %s", exc)
    for path in staged.created:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("reload: undoing: cannot remove %s: %s", path, exc.strerror)
    for store, before, _after in staged.grown:
        try:
            await asyncio.to_thread(_resize_file, store.fd, before)
        except OSError as exc:
            log.error("reload: undoing: cannot cut %s back to %d bytes: %s", store.path, before, exc.strerror)
    staged.stores.clear()
    staged.created.clear()
    staged.grown.clear()


def _commit(array: Array, plan: ReloadPlan, staged: _Staged) -> None:
    """Swap everything in. Synchronous: no host command runs in the middle of it."""
    iscsi = array.iscsi
    for t, lun in plan.removed_luns:
        rec = array.luns.pop((t.name, lun.lun), None)
        if rec is None or rec.lu is None:
            continue
        target = array.targets.get(t.name)
        if target is not None and lun.lun in target.luns:
            target.remove_lun(lun.lun)  # REPORTED LUNS DATA HAS CHANGED to the target's other LUNs
        if rec.lu.backstore in array.stores:
            array.stores.remove(rec.lu.backstore)
            staged.closing_stores.append(rec.lu.backstore)
        log.info("LUN %d of %s removed", lun.lun, t.name)
    for t in plan.removed_targets:
        array.targets.pop(t.name, None)
        if iscsi is not None:
            iscsi.targets.pop(t.name, None)
    for name, target in staged.targets.items():
        array.targets[name] = target
        if iscsi is not None:
            iscsi.targets[name] = target
    for grown, _before, after in staged.grown:
        grown.size = after
    for t, old, new in plan.grown:
        lu = array.luns[(t.name, new.lun)].lu
        assert lu is not None
        lu.capacity_changed()
        log.info("LUN %d of %s grown from %d to %d MiB", new.lun, t.name, old.size >> 20, new.size >> 20)
    targets = {t.name: t for t in plan.new.targets}
    for (tname, num), rec in array.luns.items():  # kept LUNs follow the new config
        rec.target = targets[tname]
        rec.cfg = next(lun for lun in rec.target.luns if lun.lun == num)
    for key, rec in staged.records.items():
        array.luns[key] = rec
        store = staged.stores.get(key)
        if store is not None:
            array.stores.append(store)
            array._attach(rec, store, staged.lus[key])  # REPORTED LUNS DATA HAS CHANGED to the others
    staged.stores.clear()
    staged.created.clear()
    staged.grown.clear()
    _commit_peers(array, plan, staged)
    array.cfg = plan.new
    _refresh_portal(array)
    _warn_outside_acl(array, plan)
    for peer in sorted({lun.map.array for _t, lun in plan.added_luns if lun.map is not None}):
        link = array.links.get(peer)
        if link is not None and link.connected:  # otherwise the link coming up attaches them
            task = asyncio.get_running_loop().create_task(array._refresh_virtual(peer))
            array._refreshing.add(task)
            task.add_done_callback(array._refreshing.discard)


def _commit_peers(array: Array, plan: ReloadPlan, staged: _Staged) -> None:
    secrets = array.link_server.secrets if array.link_server is not None else None  # read at each handshake
    for p in plan.removed_peers:
        link = array.links.pop(p.name, None)
        if link is not None:
            staged.closing_links.append(link)
        if secrets is not None:
            secrets.pop(p.name, None)
        staged.dropped_peers.append(p.name)
    for p, _what in plan.changed_peers:
        link = array.links.get(p.name)
        if link is not None:
            link.host, link.port = parse_hostport(p.address, "remote.peers.address", plan.new.source)
            link.secret = p.secret
        if secrets is not None:
            secrets[p.name] = p.secret
    for p in plan.added_peers:
        link = array.links[p.name] = staged.links.pop(p.name)
        if secrets is not None:
            secrets[p.name] = p.secret
        link.start()


def _refresh_portal(array: Array) -> None:
    """New logins read targets, ACLs, CHAP and login settings from the portal: give it the new ones."""
    live = array.iscsi.portal if array.iscsi is not None else None
    if live is None or array.address is None:
        return
    fresh = array.portal(array.address)
    live.targets.clear()
    live.targets.update(fresh.targets)
    live.addresses[:] = fresh.addresses
    live.discovery_chap = fresh.discovery_chap
    live.operational.clear()
    live.operational.update(fresh.operational)
    live.chap_algorithms = fresh.chap_algorithms


def _warn_outside_acl(array: Array, plan: ReloadPlan) -> None:
    """A narrower ACL does not cut off sessions already logged in: say which ones it would refuse."""
    if array.iscsi is None:
        return
    for name in plan.access:
        info = array.iscsi.portal.targets.get(name)
        if info is None:
            continue
        for proto in array.iscsi.connections:
            nexus = proto.conn.nexus
            if nexus is not None and nexus.target == name and not info.allows(nexus.initiator):
                log.warning("reload: %s stays logged in to %s although the new initiators list would refuse it; "
                            "it keeps access until it logs out", nexus.initiator, name)


async def _finish(array: Array, staged: _Staged) -> None:
    """Close what the commit let go of: removed LUNs' files (fdatasync), removed peers' links."""
    for store in staged.closing_stores:
        try:
            await asyncio.to_thread(store.close)
        except OSError as exc:
            log.error("reload: closing a removed LUN's store: %s", exc)
    for link in staged.closing_links:
        await link.close()
    if array.link_server is not None:
        for conn in list(array.link_server.connections):
            if conn.peer in staged.dropped_peers:
                conn.close("peer removed from the configuration")


def _refused(source: str, reasons: list[str]) -> None:
    for reason in reasons:
        log.error("reload refused: %s: %s", source, reason)
    log.error("reload refused (%d problem(s)): nothing applied, the running configuration stays in force",
              len(reasons))


async def reload_array(array: Array, new_cfg: ArrayConfig) -> ReloadPlan:
    """Apply ``new_cfg`` to the running array, all or nothing; one reload at a time."""
    lock = _locks.get(array)
    if lock is None:
        lock = _locks[array] = asyncio.Lock()
    async with lock:
        return await _reload(array, new_cfg)


async def _reload(array: Array, new_cfg: ArrayConfig) -> ReloadPlan:
    src = new_cfg.source
    plan = make_plan(array.cfg, new_cfg, live_facts(array))
    for item in plan.restart:
        log.warning("reload: needs restart, not applied: %s", item)
    if plan.refused:
        _refused(src, plan.refused)
        plan.outcome = "refused"
        return plan
    if plan.empty:
        log.info("reload: %s: nothing to apply%s", src, " until a restart" if plan.restart else "")
        plan.outcome = "unchanged"
        return plan
    staged = _Staged()
    try:
        await _prepare(array, plan, staged)
        again = make_plan(array.cfg, new_cfg, live_facts(array))  # a host may have logged in meanwhile
        if again.refused:
            await _rollback(staged)
            _refused(src, again.refused)
            again.outcome = "refused"
            return again
        _commit(array, plan, staged)
    except asyncio.CancelledError:
        await _rollback(staged)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure before the commit leaves the old config in force
        await _rollback(staged)
        log.error("reload: %s: could not apply (%s); nothing changed, the running configuration stays in force",
                  src, exc)
        plan.outcome = "failed"
        return plan
    await _finish(array, staged)
    log.info("reload: %s: applied: %s", src, "; ".join(plan.changes()))
    plan.outcome = "applied"
    return plan


async def reload_from(array: Array, reread: Callable[[], ArrayConfig] | None) -> None:
    """SIGHUP: re-read the config file; a file that does not load changes nothing."""
    if reread is None:
        log.warning("reload: storaged runs its embedded default configuration (no --config): nothing to re-read")
        return
    try:
        cfg = await asyncio.to_thread(reread)
    except ConfigError as exc:
        log.error("reload: %s; nothing changed, the running configuration stays in force", exc)
        return
    try:
        await array.reload(cfg)
    except Exception:  # a bug, not a config problem: say so, keep serving
        log.exception("reload: %s: failed unexpectedly", cfg.source)

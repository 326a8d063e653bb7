"""What a config reload would change, and whether all of it may change while hosts are attached.

Pure: old config + new config + :class:`Facts` (what the running array knows: pairs, sessions,
reservations, peers using a LUN) in, a :class:`ReloadPlan` out. No sockets and no files beyond a
``stat`` of the LUN files a reload would create, so the rules can be tested on their own.

Three kinds of change:

* live: new targets and LUNs, grown data LUNs, a target's alias/ACL/CHAP, remote peers, and the
  iSCSI login settings (advertised addresses, negotiated limits, digests, CHAP algorithms,
  discovery CHAP). New logins see them; existing sessions keep theirs.
* refused: anything that would pull data or identity from under a host or a pair (shrinking,
  removing a LUN that is paired, used by a peer, logged in to or reserved, changing a served LUN's
  file, geometry or identity). One refusal refuses the whole reload: nothing is applied.
* needs restart: process-wide settings read once at start (listen addresses, data_dir, the array
  name, tuning, replication, metrics, log level). They are logged and left as they are; the rest
  of the reload applies, and a restart picks them up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ArrayConfig, LunConfig, PeerConfig, TargetConfig

Key = tuple[str, int]
#: a LUN file check: (config, LUN) -> (field, problem) or None (storaged.configcheck.lun_file_problem)
FileCheck = Callable[[ArrayConfig, LunConfig], "tuple[str, str] | None"]

#: iSCSI settings new logins read from the portal (everything else in ``iscsi`` needs a restart)
LIVE_ISCSI = frozenset({"advertise", "max_recv_data_segment_length", "max_burst_length", "first_burst_length",
                        "max_outstanding_r2t", "digests", "chap_algorithms", "discovery_chap"})
#: remote settings a reload applies (listen and timeouts need a restart)
LIVE_REMOTE = frozenset({"peers"})
#: LunConfig fields that only describe how the config was checked, not the LUN
_LUN_IGNORED = frozenset({"size", "allow_outside_data_dir"})
#: the config key of an ArrayConfig field, where it is not the field's own name
_TOP_KEYS = {"name": "array.name", "data_dir": "array.data_dir", "log_level": "array.log_level"}
_SECRET_FIELDS = frozenset({"secret", "discovery_chap", "chap"})


@dataclass(frozen=True)
class Facts:
    """What the running array knows that neither config file says."""

    #: LUN -> the journal group using it (volume or journal)
    paired: Mapping[Key, str] = field(default_factory=dict)
    #: LUN -> peers that used it over the remote link (a peer's virtual volume, a pair's reads)
    peer_users: Mapping[Key, frozenset[str]] = field(default_factory=dict)
    #: target -> sessions logged in to it now
    sessions: Mapping[str, int] = field(default_factory=dict)
    #: LUNs with a SCSI-2 reservation or persistent reservation registrations
    reserved: frozenset[Key] = frozenset()
    #: peer -> journal groups paired with it
    group_peers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: LUNs whose store is a plain sparse file this array can grow in place
    growable: frozenset[Key] = frozenset()


@dataclass
class ReloadPlan:
    """The difference between the running config and a new one, checked as a whole."""

    old: ArrayConfig
    #: the config that will be in force: the new one, with the needs-restart settings kept as they are
    new: ArrayConfig
    added_targets: list[TargetConfig] = field(default_factory=list)
    removed_targets: list[TargetConfig] = field(default_factory=list)
    #: (target, LUN) in the new config, including every LUN of an added target
    added_luns: list[tuple[TargetConfig, LunConfig]] = field(default_factory=list)
    #: (target, LUN) in the old config, including every LUN of a removed target
    removed_luns: list[tuple[TargetConfig, LunConfig]] = field(default_factory=list)
    #: (target, old LUN, new LUN)
    grown: list[tuple[TargetConfig, LunConfig, LunConfig]] = field(default_factory=list)
    #: target name -> what changed in who may log in (alias, initiators, chap)
    access: dict[str, list[str]] = field(default_factory=dict)
    added_peers: list[PeerConfig] = field(default_factory=list)
    removed_peers: list[PeerConfig] = field(default_factory=list)
    #: (peer, what changed: address and/or secret)
    changed_peers: list[tuple[PeerConfig, list[str]]] = field(default_factory=list)
    #: iSCSI login settings that changed
    portal: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: what became of it: planned, applied, unchanged, refused or failed (set by storaged/array/reload.py)
    outcome: str = "planned"

    @property
    def empty(self) -> bool:
        return not self.changes()

    def changes(self) -> list[str]:
        """One short phrase per applied change, for the summary log line."""
        out = [f"target {t.name} added" for t in self.added_targets]
        out += [f"target {t.name} removed" for t in self.removed_targets]
        out += [f"LUN {lun.lun} of {t.name} added ({_describe_lun(lun)})" for t, lun in self.added_luns]
        out += [f"LUN {lun.lun} of {t.name} removed" for t, lun in self.removed_luns
                if t.name not in {r.name for r in self.removed_targets}]
        out += [f"LUN {o.lun} of {t.name} grown {_size(o.size)} -> {_size(n.size)}" for t, o, n in self.grown]
        out += [f"target {name}: {', '.join(what)} (new logins)" for name, what in self.access.items()]
        out += [f"peer {p.name} added" for p in self.added_peers]
        out += [f"peer {p.name} removed" for p in self.removed_peers]
        out += [f"peer {p.name}: {', '.join(what)} (next connection)" for p, what in self.changed_peers]
        if self.portal:
            out.append(f"iscsi {', '.join(self.portal)} (new logins)")
        return out


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _describe_lun(lun: LunConfig) -> str:
    if lun.map is not None:
        return f"virtual volume of {lun.map.array} LUN {lun.map.lun}"
    return f"{lun.kind}, {_size(lun.size)}" + ("" if lun.command_device else f", {lun.file}")


def _show(name: str, value: Any) -> str:
    if name in _SECRET_FIELDS and value is not None:
        return "(changed)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keep_restart_only(old: ArrayConfig, new: ArrayConfig, plan: ReloadPlan) -> ArrayConfig:
    """Note each needs-restart setting that differs; return ``new`` with the running values for them."""
    kept: dict[str, Any] = {}
    for f in dataclasses.fields(ArrayConfig):
        if f.name in ("targets", "source"):
            continue
        o, n = getattr(old, f.name), getattr(new, f.name)
        if o == n:
            continue
        live = {"iscsi": LIVE_ISCSI, "remote": LIVE_REMOTE}.get(f.name)
        if dataclasses.is_dataclass(o) and dataclasses.is_dataclass(n):
            held = {}
            for sf in dataclasses.fields(o):
                ov, nv = getattr(o, sf.name), getattr(n, sf.name)
                if ov == nv:
                    continue
                if live is not None and sf.name in live:
                    if f.name == "iscsi":
                        plan.portal.append(sf.name)
                    continue
                plan.restart.append(f"{f.name}.{sf.name}: {_show(sf.name, ov)} -> {_show(sf.name, nv)}")
                held[sf.name] = ov
            if held:
                kept[f.name] = dataclasses.replace(n, **held)  # type: ignore[type-var]
        else:
            plan.restart.append(f"{_TOP_KEYS.get(f.name, f.name)}: {_show(f.name, o)} -> {_show(f.name, n)}")
            kept[f.name] = o
    return dataclasses.replace(new, **kept) if kept else new


def _lun_in_use(key: Key, facts: Facts, what: str) -> list[str]:
    """Why a LUN may not go away (or change size) under its users."""
    why = []
    if key in facts.paired:
        why.append(f"paired (journal group {facts.paired[key]}): {what} after deleting the pair")
    peers = facts.peer_users.get(key)
    if peers:
        why.append(f"used over the remote link by {', '.join(sorted(peers))} (a virtual volume in its LUN map "
                   "or a pair's copy); restart storaged once the peer no longer maps it")
    return why


def _removal(t: TargetConfig, lun: LunConfig, facts: Facts) -> list[str]:
    key = (t.name, lun.lun)
    why = _lun_in_use(key, facts, "remove it")
    n = facts.sessions.get(t.name, 0)
    if n:
        why.append(f"in use: {n} session(s) logged in to {t.name}; log them out first")
    if key in facts.reserved:
        why.append("reserved (SCSI reservation or persistent reservation registrations); release them first")
    return [f"LUN {lun.lun} of {t.name}: cannot remove: {w}" for w in why]


def _lun_change(i: int, j: int, t: TargetConfig, o: LunConfig, n: LunConfig, facts: Facts,
                plan: ReloadPlan) -> None:
    where = f"targets[{i}].luns[{j}]"
    key = (t.name, n.lun)
    changed = [f.name for f in dataclasses.fields(LunConfig)
               if f.name not in _LUN_IGNORED and getattr(o, f.name) != getattr(n, f.name)]
    if changed:
        plan.refused.append(f"{where}.{changed[0]}: LUN {n.lun} of {t.name}: {', '.join(changed)} cannot change "
                            "while the LUN is served (remove the LUN in one reload and add it back in another, "
                            "or restart)")
        return
    if n.size == o.size:
        return
    if n.size < o.size:
        plan.refused.append(f"{where}.size: LUN {n.lun} of {t.name}: cannot shrink from {_size(o.size)} to "
                            f"{_size(n.size)} (hosts may hold data past the new end)")
        return
    if n.kind != "data":
        plan.refused.append(f"{where}.size: LUN {n.lun} of {t.name}: a {n.kind}'s size cannot change live")
        return
    why = _lun_in_use(key, facts, "grow it")
    if not why and key not in facts.growable:
        why.append("its store is not a plain file this array can grow in place (replication wraps it)")
    for w in why:
        plan.refused.append(f"{where}.size: LUN {n.lun} of {t.name}: cannot grow: {w}")
    if not why:
        plan.grown.append((t, o, n))


def _targets(old: ArrayConfig, new: ArrayConfig, facts: Facts, check: FileCheck, plan: ReloadPlan) -> None:
    before = {t.name: t for t in old.targets}
    after = {t.name for t in new.targets}
    if old.targets[0].name != new.targets[0].name:
        plan.refused.append(f"targets[0].name: the first target would change from {old.targets[0].name} to "
                            f"{new.targets[0].name}; peers and journal groups that name no target mean the "
                            "first one, so keep it first (a restart may reorder)")
    for t in old.targets:
        if t.name not in after:
            plan.removed_targets.append(t)
            plan.removed_luns += [(t, lun) for lun in t.luns]
            for lun in t.luns:
                plan.refused += _removal(t, lun, facts)
    removed_files = {lun.file for t, lun in plan.removed_luns if lun.kind == "data"}
    for i, t in enumerate(new.targets):
        prev = before.get(t.name)
        old_luns: dict[int, LunConfig] = {}
        if prev is None:
            plan.added_targets.append(t)
        else:
            access = [k for k in ("alias", "initiators", "chap") if getattr(prev, k) != getattr(t, k)]
            if access:
                plan.access[t.name] = access
            if prev.portal_group_tag != t.portal_group_tag:
                plan.refused.append(f"targets[{i}].portal_group_tag: target {t.name}: cannot change while the "
                                    "target is served (sessions and multipath key on it); restart storaged")
            old_luns = {lun.lun: lun for lun in prev.luns}
            new_nums = {lun.lun for lun in t.luns}
            for lun in prev.luns:
                if lun.lun not in new_nums:
                    plan.removed_luns.append((prev, lun))
                    plan.refused += _removal(prev, lun, facts)
                    if lun.kind == "data":
                        removed_files.add(lun.file)
        for j, lun in enumerate(t.luns):
            o = old_luns.get(lun.lun)
            if o is not None:
                _lun_change(i, j, t, o, lun, facts, plan)
                continue
            plan.added_luns.append((t, lun))
            if lun.kind != "data":
                continue
            if lun.file in removed_files:
                plan.refused.append(f"targets[{i}].luns[{j}].file: LUN {lun.lun} of {t.name}: {lun.file} belongs "
                                    "to a LUN this reload removes; remove it in one reload, add it in the next")
                continue
            found = check(new, lun)
            if found is not None:
                plan.refused.append(f"targets[{i}].luns[{j}].{found[0]}: LUN {lun.lun} of {t.name}: {found[1]}")


def _peers(old: ArrayConfig, new: ArrayConfig, facts: Facts, plan: ReloadPlan) -> None:
    before = {p.name: p for p in old.remote.peers}
    after = {p.name: p for p in new.remote.peers}
    for name, p in before.items():
        if name not in after:
            groups = facts.group_peers.get(name, ())
            if groups:
                plan.refused.append(f"remote.peers: cannot remove peer {name}: journal group(s) "
                                    f"{', '.join(groups)} are paired with it")
            plan.removed_peers.append(p)
    for name, p in after.items():
        prev = before.get(name)
        if prev is None:
            plan.added_peers.append(p)
            continue
        what = [k for k in ("address", "secret") if getattr(prev, k) != getattr(p, k)]
        if what:
            plan.changed_peers.append((p, what))


def make_plan(old: ArrayConfig, new: ArrayConfig, facts: Facts, check: FileCheck | None = None) -> ReloadPlan:
    """Diff ``old`` (running) against ``new`` (re-read) and check every change against ``facts``.

    ``check`` inspects a LUN file a reload would create (default: the same stat-only check as
    ``storaged --check-config``); it sees the config in force, whose data_dir is the running one.
    """
    if check is None:
        from ..configcheck import lun_file_problem

        check = lun_file_problem
    plan = ReloadPlan(old=old, new=new)
    plan.new = effective = _keep_restart_only(old, new, plan)
    _targets(old, effective, facts, check, plan)
    _peers(old, effective, facts, plan)
    return plan

"""What a scrape reports, read from the running array on its event loop into plain data.

The figures already exist: per-LUN counters (:class:`~storaged.metrics.iostats.LunIoStats` on each
logical unit), the iSCSI session registry and the portal's refused-login counts, each peer link's
``status()`` (what ``hostctl link`` shows) and the replication table. For a group the primary
reads its own journal; the secondary asks the primary as ``pairdisplay`` does
(:meth:`Replication.display`), which also measures the lag. :func:`gather` runs on the loop that
owns all of it, so nothing is read while it changes; the collector then formats the copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..array.array import Array
    from ..iscsi.transport import IscsiServer
    from ..remote.link import PeerLink
    from ..repl.journal import PrimaryJournal
    from ..repl.manager import Replication
    from ..repl.model import Group
    from ..scsi.target import ScsiTarget

log = logging.getLogger("storaged.metrics")

#: how long a scrape waits for the primary's answer about a secondary group
GROUP_TIMEOUT = 3.0


@dataclass(slots=True)
class LunSample:
    target: str
    lun: int
    read_ops: int
    read_bytes: int
    read_ns: int
    read_hist: list[int]
    write_ops: int
    write_bytes: int
    write_ns: int
    write_hist: list[int]


@dataclass(slots=True)
class LinkSample:
    peer: str
    up: bool
    rtt_seconds: float | None
    reconnects: int
    bytes_in: int
    bytes_out: int


@dataclass(slots=True)
class GroupSample:
    """One journal group as this array sees it; None where the figure is unknown right now
    (a secondary that cannot reach its primary does not know how far behind it is)."""

    name: str
    role: str
    peer: str
    state: str
    journal_used_ratio: float | None = None
    entries_behind: int | None = None
    bytes_behind: int | None = None
    rpo_seconds: float | None = None
    #: secondary in COPY: the fraction of the P-VOLs copied so far
    copy_ratio: float | None = None


@dataclass(slots=True)
class Snapshot:
    array: str
    luns: list[LunSample] = field(default_factory=list)
    #: normal sessions per target name (every configured target present, 0 if none)
    sessions: dict[str, int] = field(default_factory=dict)
    login_failures: dict[str, int] = field(default_factory=dict)
    links: list[LinkSample] = field(default_factory=list)
    groups: list[GroupSample] = field(default_factory=list)


def lun_samples(targets: dict[str, ScsiTarget]) -> list[LunSample]:
    out = []
    for tname, target in targets.items():
        for lun, lu in sorted(target.luns.items()):
            s = lu.io
            out.append(LunSample(tname, lun, s.read_ops, s.read_bytes, s.read_ns, list(s.read_hist),
                                 s.write_ops, s.write_bytes, s.write_ns, list(s.write_hist)))
    return out


def session_counts(targets: dict[str, ScsiTarget], iscsi: IscsiServer | None) -> dict[str, int]:
    counts = dict.fromkeys(targets, 0)
    if iscsi is not None:
        for _initiator, _isid, tname in list(iscsi.sessions):
            if tname:  # "" is a discovery session
                counts[tname] = counts.get(tname, 0) + 1
    return counts


def link_samples(links: dict[str, PeerLink]) -> list[LinkSample]:
    out = []
    for name, link in links.items():
        st = link.status()
        rtt = st.get("rtt_ms")
        out.append(LinkSample(name, st.get("state") == "up", None if rtt is None else rtt / 1000.0,
                              int(st.get("reconnects", 0)), int(st.get("bytes_in", 0)), int(st.get("bytes_out", 0))))
    return out


def primary_sample(g: Group, journal: PrimaryJournal | None, now_ns: int) -> GroupSample:
    """The primary's journal: what is in it has not been purged, and the secondary purges right
    after it restores, so the oldest entry's age is the lag as the primary can tell it."""
    out = GroupSample(g.name, g.role, g.peer, g.state)
    if journal is None:
        return out
    st = journal.status()
    out.journal_used_ratio = st["bytes_used"] / st["capacity"] if st["capacity"] else 0.0
    out.entries_behind = int(st["entries"])
    out.bytes_behind = int(st["bytes_used"])
    oldest = int(st.get("oldest_time_ns") or 0)
    out.rpo_seconds = max(0, now_ns - oldest) / 1e9 if out.entries_behind and oldest else 0.0
    return out


def secondary_sample(g: Group, view: dict[str, Any] | None) -> GroupSample:
    """The secondary's side from ``pairdisplay``'s view (``view`` None: not reachable now)."""
    out = GroupSample(g.name, g.role, g.peer, g.state)
    if g.state == "COPY":
        sizes = sum(p.size for p in g.pairs)
        out.copy_ratio = sum(min(p.copied, p.size) for p in g.pairs) / sizes if sizes else 0.0
    if view is None:
        return out
    jnl = view.get("journal")
    if jnl:
        out.journal_used_ratio = jnl["bytes_used"] / jnl["capacity"] if jnl["capacity"] else 0.0
    behind = view.get("behind")
    if behind:
        out.entries_behind = int(behind["entries"])
        out.bytes_behind = int(behind["bytes"])
    lag = view.get("lag_seconds")
    out.rpo_seconds = None if lag is None else float(lag)
    return out


async def group_samples(repl: Replication, timeout: float = GROUP_TIMEOUT) -> list[GroupSample]:
    out = []
    now_ns = time.time_ns()
    for name, g in list(repl.groups.items()):
        if g.role == "primary":
            out.append(primary_sample(g, repl.journals.get(name), now_ns))
            continue
        view: dict[str, Any] | None = None
        try:
            shown = await asyncio.wait_for(repl.display(name), timeout)
            view = shown["groups"][0]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can; the figure is left out
            log.debug("metrics: group %s: %s", name, exc)
        out.append(secondary_sample(g, view))
    return out


async def gather(array: Array) -> Snapshot:
    """Everything a scrape reports, read on the array's event loop."""
    iscsi = array.iscsi
    snap = Snapshot(array.name)
    snap.luns = lun_samples(array.targets)
    snap.sessions = session_counts(array.targets, iscsi)
    if iscsi is not None:
        snap.login_failures = dict(iscsi.portal.login_failures)
    snap.links = link_samples(array.links)
    snap.groups = await group_samples(array.repl)
    return snap

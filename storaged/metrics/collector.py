"""The array's metric families, built at scrape time from a :class:`~.snapshot.Snapshot`.

A custom collector rather than Counter/Gauge objects updated as things happen: the hot path keeps
plain ints (:mod:`.iostats`), and links, sessions and groups already hold their figures, so a
scrape reads them once instead of every I/O paying for a metrics library call. Names and labels
are listed in docs/metrics.md; ``FAMILIES`` is what the dashboard test checks its queries against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from ..iscsi.login import LoginStatus
from ..repl.states import State
from .iostats import BOUNDS_S
from .snapshot import LunSample, Snapshot

#: login refusal reasons always reported (0 until one happens), so rate() has a series to work on
#: RFC 7143 login statuses, and "timeout": a login not finished within iscsi.login_timeout
LOGIN_REASONS = tuple(s.name.lower() for s in LoginStatus if s is not LoginStatus.SUCCESS) + ("timeout",)
GROUP_STATES = tuple(s.value for s in State)
_LE = tuple(floatToGoString(b) for b in BOUNDS_S) + ("+Inf",)

#: every sample name this collector can produce (histograms and counters with their suffixes)
FAMILIES = frozenset({
    "storaged_array_info",
    "storaged_lun_read_bytes_total", "storaged_lun_write_bytes_total",
    "storaged_lun_read_ops_total", "storaged_lun_write_ops_total",
    "storaged_lun_latency_seconds_bucket", "storaged_lun_latency_seconds_count", "storaged_lun_latency_seconds_sum",
    "storaged_sessions", "storaged_login_failures_total",
    "storaged_link_up", "storaged_link_rtt_seconds", "storaged_link_reconnects_total", "storaged_link_bytes_total",
    "storaged_group_info", "storaged_group_state", "storaged_journal_used_ratio", "storaged_journal_entries_behind",
    "storaged_journal_bytes_behind", "storaged_group_rpo_seconds", "storaged_group_copy_ratio",
})


def _buckets(hist: list[int]) -> list[tuple[str, float]]:
    out = []
    total = 0
    for le, n in zip(_LE, hist, strict=True):
        total += n
        out.append((le, float(total)))
    return out


def lun_families(luns: list[LunSample]) -> Iterator[Metric]:
    labels = ["target", "lun"]
    rb = CounterMetricFamily("storaged_lun_read_bytes", "Bytes read from the LUN by hosts (GOOD reads)", labels=labels)
    wb = CounterMetricFamily("storaged_lun_write_bytes", "Bytes written to the LUN by hosts (GOOD writes)",
                             labels=labels)
    ro = CounterMetricFamily("storaged_lun_read_ops", "READ commands executed on the LUN", labels=labels)
    wo = CounterMetricFamily("storaged_lun_write_ops", "WRITE commands executed on the LUN (WRITE, WRITE AND "
                             "VERIFY, ORWRITE, WRITE ATOMIC, COMPARE AND WRITE)", labels=labels)
    lat = HistogramMetricFamily("storaged_lun_latency_seconds", "Time a READ or WRITE spent inside the LU",
                                labels=["target", "lun", "op"])
    for s in luns:
        key = [s.target, str(s.lun)]
        rb.add_metric(key, s.read_bytes)
        wb.add_metric(key, s.write_bytes)
        ro.add_metric(key, s.read_ops)
        wo.add_metric(key, s.write_ops)
        lat.add_metric(key + ["read"], _buckets(s.read_hist), s.read_ns / 1e9)
        lat.add_metric(key + ["write"], _buckets(s.write_hist), s.write_ns / 1e9)
    yield from (rb, wb, ro, wo, lat)


def session_families(snap: Snapshot) -> Iterator[Metric]:
    sessions = GaugeMetricFamily("storaged_sessions", "Logged-in iSCSI sessions (not discovery)", labels=["target"])
    for target, n in sorted(snap.sessions.items()):
        sessions.add_metric([target], n)
    failures = CounterMetricFamily("storaged_login_failures", "Logins refused, by reason (RFC 7143 login status)",
                                   labels=["reason"])
    counts = dict.fromkeys(LOGIN_REASONS, 0) | snap.login_failures
    for reason, n in sorted(counts.items()):
        failures.add_metric([reason], n)
    yield from (sessions, failures)


def link_families(snap: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily("storaged_link_up", "1 while the remote link to the peer is up", labels=["peer"])
    rtt = GaugeMetricFamily("storaged_link_rtt_seconds", "Last keepalive round trip to the peer", labels=["peer"])
    rec = CounterMetricFamily("storaged_link_reconnects", "Times the link came up again after being up",
                              labels=["peer"])
    nbytes = CounterMetricFamily("storaged_link_bytes", "Bytes on the link to the peer (this array's connection)",
                                 labels=["peer", "direction"])
    for s in snap.links:
        up.add_metric([s.peer], 1 if s.up else 0)
        if s.rtt_seconds is not None:
            rtt.add_metric([s.peer], s.rtt_seconds)
        rec.add_metric([s.peer], s.reconnects)
        nbytes.add_metric([s.peer, "in"], s.bytes_in)
        nbytes.add_metric([s.peer, "out"], s.bytes_out)
    yield from (up, rtt, rec, nbytes)


def group_families(snap: Snapshot) -> Iterator[Metric]:
    info = InfoMetricFamily("storaged_group", "Journal groups on this array: role and peer", labels=["group"])
    state = GaugeMetricFamily("storaged_group_state", "1 for the group's current state, 0 for the others",
                              labels=["group", "state"])
    used = GaugeMetricFamily("storaged_journal_used_ratio", "Fill of the group's primary journal (0..1)",
                             labels=["group"])
    entries = GaugeMetricFamily("storaged_journal_entries_behind", "Journal entries not yet restored on the "
                                "secondary", labels=["group"])
    nbytes = GaugeMetricFamily("storaged_journal_bytes_behind", "Journal bytes not yet restored on the secondary",
                               labels=["group"])
    rpo = GaugeMetricFamily("storaged_group_rpo_seconds", "Age of the oldest write not yet restored on the "
                            "secondary (0 when caught up)", labels=["group"])
    copy = GaugeMetricFamily("storaged_group_copy_ratio", "Secondary in COPY: fraction of the P-VOLs copied",
                             labels=["group"])
    for g in snap.groups:
        info.add_metric([g.name], {"role": g.role, "peer": g.peer})
        for st in GROUP_STATES:
            state.add_metric([g.name, st], 1 if g.state == st else 0)
        for family, value in ((used, g.journal_used_ratio), (entries, g.entries_behind),
                              (nbytes, g.bytes_behind), (rpo, g.rpo_seconds), (copy, g.copy_ratio)):
            if value is not None:
                family.add_metric([g.name], value)
    yield from (info, state, used, entries, nbytes, rpo, copy)


class ArrayCollector:
    """A prometheus_client collector (``collect()``) over ``source``, which returns a fresh
    :class:`Snapshot` each time it is called."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        yield InfoMetricFamily("storaged_array", "The array this storaged serves", value={"array": snap.array})
        yield from lun_families(snap.luns)
        yield from session_families(snap)
        yield from link_families(snap)
        yield from group_families(snap)

"""The metrics collector without sockets: real logical units and the real login machine count,
the collector formats what they counted, prometheus_client's own parser reads it back."""

from __future__ import annotations

import struct

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from storaged.backstore.memory import MemoryBackstore
from storaged.iscsi.login import LoginMachine
from storaged.metrics.collector import FAMILIES, GROUP_STATES, ArrayCollector
from storaged.metrics.iostats import BOUNDS_NS, LunIoStats
from storaged.metrics.server import array_registry
from storaged.metrics.snapshot import (
    LinkSample,
    Snapshot,
    lun_samples,
    primary_sample,
    secondary_sample,
    session_counts,
)
from storaged.repl.model import Group, Pair
from storaged.scsi.lu import LogicalUnit
from storaged.scsi.target import ScsiTarget
from storaged.scsi.types import Nexus, ScsiCommand

from ..iscsi.helpers import INITIATOR, login_pdu, make_portal

TARGET = "iqn.2026-11.test:metrics"
NEXUS = Nexus("iqn.2026-11.test:host", bytes(6), TARGET)
BS = 512


def make_lu(naa_byte: int) -> LogicalUnit:
    naa = bytes.fromhex("6005354f") + bytes([naa_byte]) * 12
    return LogicalUnit(MemoryBackstore(2048 * BS), naa=naa, serial=f"SN{naa_byte}", block_size=BS)


def rw10(op: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, n, 0)


def scrape(snap: Snapshot) -> dict[str, list[Sample]]:
    text = generate_latest(array_registry(ArrayCollector(lambda: snap))).decode()
    samples: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def run(target: ScsiTarget, lun: int, cdb: bytes, data: bytes | None = None) -> int:
    return (await target.execute(ScsiCommand(cdb, lun, NEXUS, data))).status


async def test_lun_counters_reach_the_exposition() -> None:
    target = ScsiTarget(TARGET, {0: make_lu(0x11), 1: make_lu(0x22)})
    await run(target, 0, bytes(6))  # TEST UNIT READY: the POWER ON unit attention, not an I/O
    await run(target, 0, bytes(6))
    assert await run(target, 0, rw10(0x2A, 0, 8), bytes(8 * BS)) == 0
    assert await run(target, 0, rw10(0x2A, 8, 16), bytes(16 * BS)) == 0
    assert await run(target, 0, rw10(0x28, 0, 4)) == 0
    assert await run(target, 0, rw10(0x28, 4096, 1)) == 2  # beyond the end: CHECK CONDITION, no bytes
    caw = bytes([0x89, 0]) + (0).to_bytes(8, "big") + bytes(3) + bytes([1, 0, 0])
    assert await run(target, 0, caw, bytes(2 * BS)) == 0  # compare half + write half: one block written
    s = scrape(Snapshot("a", luns=lun_samples({TARGET: target})))
    key = {"target": TARGET, "lun": "0"}
    assert value(s, "storaged_lun_write_bytes_total", **key) == (8 + 16 + 1) * BS
    assert value(s, "storaged_lun_write_ops_total", **key) == 3
    assert value(s, "storaged_lun_read_bytes_total", **key) == 4 * BS
    assert value(s, "storaged_lun_read_ops_total", **key) == 2
    assert value(s, "storaged_lun_write_bytes_total", target=TARGET, lun="1") == 0
    for op, ops in (("read", 2), ("write", 3)):
        assert value(s, "storaged_lun_latency_seconds_count", op=op, **key) == ops
        assert value(s, "storaged_lun_latency_seconds_sum", op=op, **key) > 0
        buckets = [x.value for x in s["storaged_lun_latency_seconds_bucket"]
                   if x.labels["op"] == op and x.labels["lun"] == "0"]
        assert len(buckets) == len(BOUNDS_NS) + 1 and buckets == sorted(buckets) and buckets[-1] == ops


def test_histogram_bounds_are_inclusive() -> None:
    st = LunIoStats()
    cmd = ScsiCommand(rw10(0x28, 0, 1), 0, NEXUS)
    st.done(1, cmd, None, BOUNDS_NS[0])  # exactly on the first bound: le="2.5e-05"
    st.done(1, cmd, None, BOUNDS_NS[0] + 1)
    st.done(1, cmd, None, BOUNDS_NS[-1] * 2)  # beyond the last: +Inf only
    assert st.read_hist[0] == 1 and st.read_hist[1] == 1 and st.read_hist[-1] == 1
    assert st.read_ops == 3 and st.read_bytes == 0


def test_sessions_and_login_failures() -> None:
    portal = make_portal()
    m = LoginMachine(portal)
    m.handle(login_pdu([("InitiatorName", INITIATOR), ("TargetName", "iqn.2026-11.test:nobody")], 1, 3))
    assert portal.login_failures == {"not_found": 1}

    class Server:
        def __init__(self) -> None:
            self.sessions = {(INITIATOR, b"1", TARGET): None, (INITIATOR, b"2", TARGET): None,
                             (INITIATOR, b"3", ""): None}

    snap = Snapshot("a", sessions=session_counts({TARGET: ScsiTarget(TARGET), "iqn.2026-11.test:idle":
                                                  ScsiTarget("iqn.2026-11.test:idle")}, Server()),  # type: ignore[arg-type]
                    login_failures=dict(portal.login_failures))
    s = scrape(snap)
    assert value(s, "storaged_sessions", target=TARGET) == 2  # the discovery session is not counted
    assert value(s, "storaged_sessions", target="iqn.2026-11.test:idle") == 0
    assert value(s, "storaged_login_failures_total", reason="not_found") == 1
    assert value(s, "storaged_login_failures_total", reason="auth_failure") == 0


def test_links() -> None:
    s = scrape(Snapshot("a", links=[LinkSample("site-b", True, 0.0004, 2, 1000, 5000),
                                    LinkSample("site-c", False, None, 0, 0, 0)]))
    assert value(s, "storaged_link_up", peer="site-b") == 1
    assert value(s, "storaged_link_up", peer="site-c") == 0
    assert value(s, "storaged_link_rtt_seconds", peer="site-b") == 0.0004
    assert "site-c" not in {x.labels["peer"] for x in s["storaged_link_rtt_seconds"]}  # never measured
    assert value(s, "storaged_link_reconnects_total", peer="site-b") == 2
    assert value(s, "storaged_link_bytes_total", peer="site-b", direction="in") == 1000
    assert value(s, "storaged_link_bytes_total", peer="site-b", direction="out") == 5000


class Journal:
    def __init__(self, **st: int) -> None:
        self.st = st

    def status(self) -> dict[str, int]:
        return self.st


def test_primary_group_from_its_journal() -> None:
    g = Group("g1", "primary", "site-b", 1, 1, pairs=[Pair(0, 0, "PAIR", 1 << 20)], state="PAIR")
    now = 10**18
    busy = primary_sample(g, Journal(bytes_used=1 << 20, capacity=4 << 20, entries=3,  # type: ignore[arg-type]
                                     oldest_time_ns=now - 2_500_000_000), now)
    assert (busy.journal_used_ratio, busy.entries_behind, busy.bytes_behind, busy.rpo_seconds) == \
        (0.25, 3, 1 << 20, 2.5)
    idle = primary_sample(g, Journal(bytes_used=0, capacity=4 << 20, entries=0, oldest_time_ns=0), now)  # type: ignore[arg-type]
    assert idle.rpo_seconds == 0.0 and idle.entries_behind == 0
    s = scrape(Snapshot("a", groups=[busy]))
    assert value(s, "storaged_group_rpo_seconds", group="g1") == 2.5
    assert value(s, "storaged_journal_used_ratio", group="g1") == 0.25
    assert value(s, "storaged_group_info", group="g1", role="primary", peer="site-b") == 1
    states = {x.labels["state"]: x.value for x in s["storaged_group_state"]}
    assert states == {st: (1.0 if st == "PAIR" else 0.0) for st in GROUP_STATES}
    assert "storaged_group_copy_ratio" not in s


def test_secondary_group_from_the_pairdisplay_view() -> None:
    g = Group("g1", "secondary", "site-a", 1, 1, state="COPY",
              pairs=[Pair(0, 0, "COPY", 4 << 20, 1 << 20), Pair(1, 1, "PAIR", 4 << 20, 4 << 20)])
    view = {"journal": {"bytes_used": 512, "capacity": 1024, "entries": 1},
            "behind": {"entries": 7, "bytes": 4096}, "lag_seconds": 1.25}
    sample = secondary_sample(g, view)
    assert (sample.journal_used_ratio, sample.entries_behind, sample.bytes_behind, sample.rpo_seconds,
            sample.copy_ratio) == (0.5, 7, 4096, 1.25, 5 / 8)
    unreachable = secondary_sample(g, {"lag_seconds": None, "link": "down: no route"})
    s = scrape(Snapshot("b", groups=[unreachable]))
    assert "storaged_group_rpo_seconds" not in s  # unknown, not 0
    assert value(s, "storaged_group_copy_ratio", group="g1") == 5 / 8
    assert value(s, "storaged_group_state", group="g1", state="COPY") == 1


def test_registry_has_process_metrics_and_nothing_unlisted() -> None:
    lu = make_lu(0x33)
    s = scrape(Snapshot("a", luns=lun_samples({TARGET: ScsiTarget(TARGET, {0: lu})}),
                        sessions={TARGET: 0}, links=[LinkSample("p", True, 0.001, 0, 0, 0)],
                        groups=[secondary_sample(Group("g", "secondary", "p", 1, 1, state="PAIR"),
                                                 {"journal": {"bytes_used": 0, "capacity": 1},
                                                  "behind": {"entries": 0, "bytes": 0}, "lag_seconds": 0.0})]))
    assert "process_cpu_seconds_total" in s and "python_gc_collections_total" in s and "python_info" in s
    ours = {name for name in s if name.startswith("storaged_")}
    assert ours <= FAMILIES, ours - FAMILIES
    assert value(s, "storaged_array_info", array="a") == 1


def test_two_arrays_in_one_process_have_separate_registries() -> None:
    a = scrape(Snapshot("a", sessions={"t": 1}))
    b = scrape(Snapshot("b", sessions={"t": 5}))
    assert value(a, "storaged_sessions", target="t") == 1 and value(b, "storaged_sessions", target="t") == 5

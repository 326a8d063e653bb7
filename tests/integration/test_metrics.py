"""/metrics of a live two-array lab with a pair: scraped directly, and through a real Prometheus.

Both arrays run with ``--metrics-listen 127.0.0.1:0``; a pair (site-a LUN 0 -> site-b LUN 0) is
formed and 8 MiB is written to the P-VOL with qemu-io, then each family is checked against what
the workload did. A Debian ``prometheus`` server then scrapes both arrays and the series are read
back through its HTTP API. The last test stops the secondary and watches the measured lag grow.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from storaged.iscsi.initiator import IscsiSession

from .conftest import require
from .daemon import REPO, StoragedProcess, wait_for
from .sites import Sites, free_port, iqn, site_config
from .test_replication import PVOL, command, create_pair, wait_state

pytestmark = pytest.mark.integration

MiB = 1 << 20
WRITTEN = 8 * MiB
READ = 2 * MiB
_URL = re.compile(r"metrics listening on (http://\S+)")


def metrics_url(proc: StoragedProcess) -> str:
    assert wait_for(lambda: _URL.search(proc.log) is not None, 10), proc.log
    m = _URL.search(proc.log)
    assert m is not None
    return m.group(1)


def scrape(url: str) -> dict[str, list[Sample]]:
    with urllib.request.urlopen(url, timeout=15) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def qemu_io(port: int, *commands: str) -> None:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    run = subprocess.run(args + [f"iscsi://127.0.0.1:{port}/{iqn('site-a')}/{PVOL}"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0 and "error" not in run.stdout.lower(), run.stdout + run.stderr


class Lab:
    def __init__(self, sites: Sites) -> None:
        self.sites = sites
        self.url_a = metrics_url(sites.a)
        self.url_b = metrics_url(sites.b)
        self.before: dict[str, list[Sample]] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require("qemu-io", "iscsi-inq")
    tmp = tmp_path_factory.mktemp("metrics")
    pa, pb = free_port(), free_port()
    flag = ["--metrics-listen", "127.0.0.1:0"]
    b = StoragedProcess(tmp / "b", site_config("site-b", "site-a", pb, pa), extra_args=flag)
    a = StoragedProcess(tmp / "a", site_config("site-a", "site-b", pa, pb), extra_args=flag)
    sites = Sites(a, b, tmp)
    try:
        b.start()
        a.start()
        assert sites.linked()
        lab = Lab(sites)

        async def pair() -> None:
            await create_pair(sites)
            await wait_state(sites, "PAIR")

        asyncio.run(pair())
        lab.before = scrape(lab.url_a)
        qemu_io(a.port, f"write -P 0x5a 0 {WRITTEN}", f"read 0 {READ}")
        r = asyncio.run(command(b.port, "site-b", 25, {"group": "g1", "timeout": 60}))  # pairsyncwait
        assert r.data["result"] == "DONE", r.data
        yield lab
    finally:
        sites.stop()


def test_scrape_both_arrays_after_a_workload(lab: Lab) -> None:
    key = {"target": iqn("site-a"), "lun": str(PVOL)}

    def delta(after: dict[str, list[Sample]], name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(lab.before, name, **labels)

    # a refused login, from a real initiator: the target does not exist
    run = subprocess.run(["iscsi-inq", f"iscsi://127.0.0.1:{lab.sites.a.port}/iqn.2026-11.io.storaged:nobody/0"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode != 0

    async def with_session() -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
        s = IscsiSession()
        await s.login("127.0.0.1", lab.sites.a.port, iqn("site-a"), initiator="iqn.2026-11.test:metrics")
        try:
            return await asyncio.to_thread(scrape, lab.url_a), await asyncio.to_thread(scrape, lab.url_b)
        finally:
            await s.logout()

    a, b = asyncio.run(with_session())
    # the P-VOL: exactly what qemu-io wrote and read, and as many latency observations as commands
    assert delta(a, "storaged_lun_write_bytes_total", **key) == WRITTEN
    assert delta(a, "storaged_lun_read_bytes_total", **key) >= READ
    for op in ("read", "write"):
        ops = value(a, f"storaged_lun_{op}_ops_total", **key)
        assert ops > 0 and value(a, "storaged_lun_latency_seconds_count", op=op, **key) == ops
        assert value(a, "storaged_lun_latency_seconds_bucket", op=op, le="+Inf", **key) == ops
        assert value(a, "storaged_lun_latency_seconds_sum", op=op, **key) > 0
    # the S-VOL is written by restore, not by hosts
    assert value(b, "storaged_lun_write_bytes_total", target=iqn("site-b"), lun="0") == 0
    assert value(a, "storaged_sessions", target=iqn("site-a")) == 1
    assert value(b, "storaged_sessions", target=iqn("site-b")) == 0
    assert value(a, "storaged_login_failures_total", reason="not_found") == 1
    # links, from both ends
    for samples, peer in ((a, "site-b"), (b, "site-a")):
        assert value(samples, "storaged_link_up", peer=peer) == 1
        assert value(samples, "storaged_link_rtt_seconds", peer=peer) >= 0
        assert value(samples, "storaged_link_bytes_total", peer=peer, direction="out") > 0
        assert value(samples, "storaged_link_reconnects_total", peer=peer) == 0
    # the secondary pulled at least the 8 MiB journaled on the primary through its link
    assert value(b, "storaged_link_bytes_total", peer="site-a", direction="in") >= WRITTEN
    # the journal group on both arrays
    for samples, role in ((a, "primary"), (b, "secondary")):
        assert value(samples, "storaged_group_info", group="g1", role=role) == 1
        assert value(samples, "storaged_group_state", group="g1", state="PAIR") == 1
        assert value(samples, "storaged_group_state", group="g1", state="COPY") == 0
        assert value(samples, "storaged_group_rpo_seconds", group="g1") >= 0
        assert 0 <= value(samples, "storaged_journal_used_ratio", group="g1") <= 1
        assert value(samples, "storaged_journal_entries_behind", group="g1") >= 0
        assert value(samples, "storaged_journal_bytes_behind", group="g1") >= 0
        assert "process_cpu_seconds_total" in samples and "python_gc_collections_total" in samples
    assert value(a, "storaged_array_info", array="site-a") == 1


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def dashboard_queries_evaluate(base: str) -> None:
    """Every query of the Grafana dashboard is valid PromQL here, and the panels the issue names
    show data for both arrays (Grafana's $__rate_interval and $array filled in as Grafana would)."""
    dash = json.loads((REPO / "ops" / "grafana" / "storaged.json").read_text())
    targets = [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]
    must_show = ("RPO", "Journal usage", "Write throughput", "Latency", "Link state")
    deadline = time.monotonic() + 30
    while True:
        empty = []
        for title, expr in targets:
            result = query(base, expr.replace("$__rate_interval", "5s").replace("$array", ".*"))
            if title.startswith(must_show) and not result:
                empty.append(title)
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, f"dashboard panels without data: {empty}"


def test_prometheus_server_reads_the_series(lab: Lab, tmp_path: Path) -> None:
    require("prometheus")
    port = free_port()
    hosts = [u.split("/")[2] for u in (lab.url_a, lab.url_b)]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "storaged", "static_configs": [{"targets": hosts}]}],
    }))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wanted = {
        "up": 'up{job="storaged"} == 1',
        "link": "storaged_link_up == 1",
        "rpo": 'storaged_group_rpo_seconds{group="g1"}',
        "journal": 'storaged_journal_used_ratio{group="g1"}',
        "written": f'storaged_lun_write_bytes_total{{target="{iqn("site-a")}",lun="0"}} >= {WRITTEN}',
        "latency": f'storaged_lun_latency_seconds_count{{target="{iqn("site-a")}",lun="0",op="write"}} > 0',
    }
    need = {"up": 2, "link": 2, "rpo": 2, "journal": 2, "written": 1, "latency": 1}
    got: dict[str, list[dict[str, Any]]] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, "prometheus exited:\n" + (tmp_path / "prometheus.log").read_text()
            try:
                got = {k: query(base, q) for k, q in wanted.items()}
            except OSError:
                got = {}  # not listening yet
            if got and all(len(got[k]) == n for k, n in need.items()):
                break
            time.sleep(0.5)
        missing = {k: got.get(k) for k, n in need.items() if len(got.get(k, [])) != n}
        assert not missing, f"series not in Prometheus after 90 s: {missing}\n" + \
            (tmp_path / "prometheus.log").read_text()[-3000:]
        assert {r["metric"]["instance"] for r in got["rpo"]} == set(hosts)
        assert {r["metric"]["peer"] for r in got["link"]} == {"site-a", "site-b"}
        dashboard_queries_evaluate(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_rpo_grows_while_the_secondary_is_down(lab: Lab) -> None:
    """Writes the secondary cannot take stay in the primary's journal and age there."""
    assert lab.sites.b.stop() == 0  # a clean stop, the metrics endpoint with it
    with pytest.raises(OSError):
        scrape(lab.url_b)
    assert wait_for(lambda: value(scrape(lab.url_a), "storaged_link_up", peer="site-b") == 0, 20)
    qemu_io(lab.sites.a.port, "write -P 0x33 0 1M")
    time.sleep(1.6)  # the entry's age, not a speed: it was journaled before this sleep began
    a = scrape(lab.url_a)
    assert value(a, "storaged_group_rpo_seconds", group="g1") >= 1.5
    assert value(a, "storaged_journal_entries_behind", group="g1") > 0
    assert value(a, "storaged_journal_bytes_behind", group="g1") >= MiB
    assert value(a, "storaged_journal_used_ratio", group="g1") > 0


def test_metrics_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "storaged", "--listen", "127.0.0.1:0", "--data-dir",
                              str(tmp_path), "--metrics-listen", f"127.0.0.1:{port}"],
                             cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1, run.stderr
    assert f"cannot start: [Errno 98] metrics.listen 127.0.0.1:{port}: Address already in use" in run.stderr
    assert "Traceback" not in run.stderr

"""The dashboard and the lab's Prometheus/Grafana wiring, checked without Docker: the files parse,
every metric a dashboard query names is one the code exports, and every name and address the
files use points at something that exists (a compose service, a mounted path, a metrics port)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from storaged.config import parse_config
from storaged.metrics.collector import FAMILIES, ArrayCollector
from storaged.metrics.server import array_registry
from storaged.metrics.snapshot import Snapshot

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "ops" / "grafana" / "storaged.json"
_METRIC = re.compile(r"\b((?:storaged|process|python)_[a-z0-9_]+)\b")


def exported_names() -> set[str]:
    """Sample names the process collectors really produce here, plus every storaged family."""
    registry = array_registry(ArrayCollector(lambda: Snapshot("x")))
    return {s.name for fam in registry.collect() for s in fam.samples} | set(FAMILIES)


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repo path of a service's bind mounts"""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", []) if v.startswith("./")}


def test_every_dashboard_query_names_an_exported_metric() -> None:
    exported = exported_names()
    targets = dashboard_targets()
    assert targets
    named: set[str] = set()
    for title, t in targets:
        assert t["expr"].strip(), title
        assert t["datasource"]["uid"] == "prometheus", title
        found = set(_METRIC.findall(t["expr"]))
        assert found, f"{title}: no storaged metric in {t['expr']}"
        assert found <= exported, f"{title}: {sorted(found - exported)} are not exported"
        named |= found
    # what the issue asks the dashboard to show
    for metric in ("storaged_group_rpo_seconds", "storaged_journal_used_ratio", "storaged_lun_write_bytes_total",
                   "storaged_lun_read_bytes_total", "storaged_lun_latency_seconds_bucket", "storaged_link_up"):
        assert metric in named, metric


def test_dashboard_panels_do_not_overlap() -> None:
    dash = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_lab_prometheus_scrapes_both_arrays_metrics_ports() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    prom_cfg = yaml.safe_load((REPO / mounts(prom)[config_path]).read_text())
    targets = [t for job in prom_cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(t.split(":")[0] for t in targets) == ["site-a", "site-b"]
    for target in targets:
        host, port = target.split(":")
        svc = services[host]
        assert set(svc["networks"]) & set(prom["networks"]), f"prometheus cannot reach {host}"
        raw = yaml.safe_load((REPO / mounts(svc)["/etc/storaged/array.yaml"]).read_text())
        for peer in raw.get("remote", {}).get("peers", []):
            peer["secret_file"] = str(REPO / "configs" / "lab-link-secret")
        cfg = parse_config(raw, str(REPO / mounts(svc)["/etc/storaged/array.yaml"]))
        assert cfg.metrics.listen == f"0.0.0.0:{port}", f"{host} does not serve metrics on {port}"


def test_lab_grafana_is_provisioned_with_the_dashboard() -> None:
    services = compose()["services"]
    graf = services["grafana"]
    m = mounts(graf)
    prov = REPO / m["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus"
    host, port = ds["url"].removeprefix("http://").split(":")
    assert host in services and set(services[host]["networks"]) & set(graf["networks"])
    assert f"--web.listen-address=0.0.0.0:{port}" in services[host].get("command", []) or port == "9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "storaged.yml").read_text())["providers"]
    dash_dir = provider["options"]["path"]
    mounted = {c: REPO / src for c, src in m.items() if c.startswith(dash_dir + "/")}
    assert DASHBOARD in mounted.values(), f"the dashboard is not mounted under {dash_dir}"
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted.get(home) == DASHBOARD

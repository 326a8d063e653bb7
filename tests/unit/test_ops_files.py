"""The ops files: lab and docker configs load, and the compose file wires what exists.

Docker cannot run here (no engine), so the compose file is checked for structure instead: every
mounted file exists, every service's peer is reachable on a network it shares, configs parse."""

from __future__ import annotations

from pathlib import Path

import yaml

from storaged.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_lab_configs_load() -> None:
    a = load_config(str(REPO / "configs" / "site-a.yaml"))
    b = load_config(str(REPO / "configs" / "site-b.yaml"))
    assert (a.name, b.name) == ("site-a", "site-b")
    assert a.remote.peers[0].secret == b.remote.peers[0].secret
    assert [lun.kind for lun in a.targets[0].luns] == ["data", "data", "command_device", "virtual", "virtual", "data"]
    load_config(str(REPO / "configs" / "example-array.yaml"))


def test_compose_lab_mounts_and_networks() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"site-a", "site-b", "host-a", "wan-proxy"} <= set(services)
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name} mounts missing {src}"
        assert set(svc.get("networks", [])) <= set(compose["networks"])
    for site in ("site-a", "site-b"):
        mounted = {v.split(":")[1]: v.split(":")[0] for v in services[site]["volumes"]}
        raw = yaml.safe_load((REPO / mounted["/etc/storaged/array.yaml"]).read_text())
        for peer in raw["remote"]["peers"]:
            peer["secret_file"] = str(REPO / "configs" / "lab-link-secret")
            host = peer["address"].split(":")[0]
            assert host in services, f"{site}'s peer address {host} is not a service"
            assert set(services[host]["networks"]) & set(services[site]["networks"]), f"{site} cannot reach {host}"
        cfg = parse_config(raw, str(REPO / mounted["/etc/storaged/array.yaml"]))
        assert cfg.iscsi.listen.startswith("0.0.0.0:")
    assert (REPO / "Dockerfile").exists()


def test_systemd_units_point_at_the_installed_commands() -> None:
    unit = (REPO / "systemd" / "storaged@.service").read_text()
    assert "ExecStart=/opt/storaged/.venv/bin/storaged --config /etc/storaged/%i.yaml" in unit
    assert "KillSignal=SIGTERM" in unit

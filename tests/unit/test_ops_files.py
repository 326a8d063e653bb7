"""The ops files: lab and docker configs load, and the compose file wires what exists.

Docker cannot run here (no engine), so the compose file is checked for structure instead: every
mounted file exists, every service's peer is reachable on a network it shares, configs parse."""

from __future__ import annotations

import shlex
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


def compose_header_commands(service: str) -> list[list[str]]:
    """The ``docker compose exec SERVICE ...`` tips in docker-compose.yml's header comment, split."""
    header = []
    for line in (REPO / "docker-compose.yml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    prefix = f"docker compose exec {service} "
    return [shlex.split(line.split("   (")[0]) for line in header if line.startswith(prefix)]


def test_compose_host_container_has_an_init() -> None:
    """``sleep infinity`` as PID 1 ignores SIGTERM: ``docker compose stop`` waited 10 s, exit 137."""
    host = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["host-a"]
    assert host.get("init") is True


def test_compose_arrays_advertise_their_service_names() -> None:
    """SendTargets must name an address the other containers can reach, not the bound 0.0.0.0."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    arrays = 0
    for name, svc in services.items():
        mounted = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
        if "/etc/storaged/array.yaml" not in mounted:
            continue
        arrays += 1
        raw = yaml.safe_load((REPO / mounted["/etc/storaged/array.yaml"]).read_text())
        for peer in raw.get("remote", {}).get("peers", []):
            peer["secret_file"] = str(REPO / "configs" / "lab-link-secret")
        cfg = parse_config(raw, mounted["/etc/storaged/array.yaml"])
        port = cfg.iscsi.listen.rsplit(":", 1)[1]
        assert cfg.iscsi.advertise == (f"{name}:{port}",), f"{name} advertises {cfg.iscsi.advertise}"
    assert arrays == 2


def test_compose_fault_proxy_tip_goes_through_its_control_port() -> None:
    """The header's fault tip must reach the proxy: it runs with --no-stdin, so only --control does."""
    from storaged.faultproxy.__main__ import parse_args

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    command = services["wan-proxy"]["command"]
    assert command[:3] == ["python", "-m", "storaged.faultproxy"]
    args = parse_args(command[3:])  # the proxy's own CLI accepts the compose command line
    assert args.control is not None and args.no_stdin
    tips = compose_header_commands("wan-proxy")
    assert tips, "no 'docker compose exec wan-proxy ...' tip in docker-compose.yml's header"
    host, port = args.control
    for argv in tips:
        assert "/proc/1/fd/0" not in " ".join(argv), "the proxy does not read stdin (--no-stdin)"
        assert argv[4:6] == ["bash", "-c"], argv  # bash: Essential in the Debian base image
        assert f"/dev/tcp/{host}/{port}" in argv[6], f"{argv[6]!r} does not use the control port {host}:{port}"
    base = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert base and base[-1].startswith("FROM debian:")


def test_systemd_units_point_at_the_installed_commands() -> None:
    unit = (REPO / "systemd" / "storaged@.service").read_text()
    assert "ExecStart=/opt/storaged/.venv/bin/storaged --config /etc/storaged/%i.yaml" in unit
    assert "KillSignal=SIGTERM" in unit
    reload = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecReload=")]
    assert reload == ["/opt/storaged/.venv/bin/storaged --check-config /etc/storaged/%i.yaml "
                      "--data-dir /var/lib/storaged/%i", "/bin/kill -HUP $MAINPID"]

"""Two sites in their own network namespaces, joined by a veth pair: remote copy across a real
(virtual) link that goes down and comes back. Host-side tools run inside site A's namespace.

Addresses (10.99.7.1, 10.99.7.2) exist only inside the two namespaces this test creates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import require
from .daemon import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "netns-link-secret-0123456789"
ADDR = {"site-a": "10.99.7.1", "site-b": "10.99.7.2"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    tag = uuid.uuid4().hex[:6]
    ns = {"site-a": f"sda-{tag}", "site-b": f"sdb-{tag}"}
    created = []
    try:
        for n in ns.values():
            ip("netns", "add", n)
            created.append(n)
            ip("-n", n, "link", "set", "lo", "up")
        ip("link", "add", f"va-{tag}", "netns", ns["site-a"], "type", "veth", "peer", "name", f"vb-{tag}",
           "netns", ns["site-b"])
        for site, dev in (("site-a", f"va-{tag}"), ("site-b", f"vb-{tag}")):
            ip("-n", ns[site], "addr", "add", f"{ADDR[site]}/24", "dev", dev)
            ip("-n", ns[site], "link", "set", dev, "up")
        ns["veth-a"] = f"va-{tag}"
        yield ns
    finally:
        for n in created:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=10)


def array_config(site: str, peer: str) -> dict:
    return {
        "array": {"name": site},
        "iscsi": {"listen": f"{ADDR[site]}:3260"},
        "remote": {"listen": f"{ADDR[site]}:3300", "io_timeout": 3, "keepalive": 0.5,
                   "peers": [{"name": peer, "address": f"{ADDR[peer]}:3300", "secret": SECRET}]},
        "targets": [{"name": f"iqn.2026-11.io.storaged:{site}", "luns": [
            {"lun": 0, "size": "32MiB", "file": "data0.img"},
            {"lun": 1, "size": "16MiB", "file": "jnl1.img"},
            {"lun": 2, "size": "4MiB", "command_device": True},
            {"lun": 3, "map": {"array": peer, "lun": 2}}]}],
    }


def in_ns(ns: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout,
                          check=check, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_replication_across_a_veth_link_that_goes_down(namespaces: dict[str, str], tmp_path: Path) -> None:
    require("qemu-img")
    procs = {}
    try:
        for site, peer in (("site-b", "site-a"), ("site-a", "site-b")):
            cfg = tmp_path / f"{site}.yaml"
            cfg.write_text(yaml.safe_dump(array_config(site, peer)))
            log = open(tmp_path / f"{site}.log", "w")
            procs[site] = subprocess.Popen(
                ["ip", "netns", "exec", namespaces[site], sys.executable, "-m", "storaged", "--config", str(cfg),
                 "--data-dir", str(tmp_path / site)], stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                env=dict(os.environ, PYTHONPATH=str(REPO)))
        host = tmp_path / "host.yaml"
        host.write_text(yaml.safe_dump({
            "initiator": "iqn.2026-11.test:netns-host", "arrays": ["site-a", "site-b"],
            "local": {"array": "site-a", "command_device": f"iscsi://{ADDR['site-a']}:3260/iqn.2026-11.io.storaged:site-a/2"},
            "timeout": 30}))
        ns_a = namespaces["site-a"]

        def hostctl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
            return in_ns(ns_a, sys.executable, "-m", "hostctl", "--config", str(host), *args, check=check,
                         timeout=timeout)

        deadline = time.monotonic() + 30
        while hostctl("--array", "site-b", "info", check=False).returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "site-a.log").read_text()[-2000:]
            time.sleep(0.5)
        hostctl("paircreate", "-g", "ns", "--pvol", "site-a:0", "--svol", "site-b:0", "--pjnl", "1", "--sjnl", "1",
                "--wait", "--no-progress")
        url_a = f"iscsi://{ADDR['site-a']}:3260/iqn.2026-11.io.storaged:site-a/0"
        url_b = f"iscsi://{ADDR['site-b']}:3260/iqn.2026-11.io.storaged:site-b/0"
        img = tmp_path / "img.raw"
        img.write_bytes(os.urandom(4 << 20))
        in_ns(ns_a, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(img), url_a)
        # the WAN goes down: the host keeps writing at site A; site B is unreachable in bounded time
        ip("-n", ns_a, "link", "set", namespaces["veth-a"], "down")
        img.write_bytes(os.urandom(6 << 20))
        in_ns(ns_a, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(img), url_a)
        # unreachable, reported within the bound (a hang would raise TimeoutExpired)
        down = hostctl("--array", "site-b", "info", check=False, timeout=25)
        assert down.returncode == 3, down.stdout + down.stderr
        shown = json.loads(hostctl("--json", "pairdisplay", "-g", "ns").stdout)["groups"][0]
        assert shown["role"] == "primary" and shown["journal"]["entries"] > 0  # journaled, not yet taken
        # the link returns: replication catches up by itself and the volumes match
        ip("-n", ns_a, "link", "set", namespaces["veth-a"], "up")
        deadline = time.monotonic() + 60
        while hostctl("--array", "site-b", "pairsyncwait", "-g", "ns", "--wait-timeout", "5", check=False).returncode:
            assert time.monotonic() < deadline, "replication did not resume after the link came back"
        a = in_ns(ns_a, "qemu-img", "compare", "-f", "raw", "-F", "raw", url_a, url_b, check=False)
        assert a.returncode == 0, a.stdout + a.stderr
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

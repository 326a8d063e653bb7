"""The compose lab's documented fault-proxy command, run against a real proxy started as the lab does.

No Docker engine here: the structure of docker-compose.yml is checked in tests/unit/test_ops_files.py;
this runs the header's ``docker compose exec wan-proxy ...`` command (what follows ``exec
wan-proxy``) on this machine against ``storaged.faultproxy`` with the compose command line, only
the addresses changed to free loopback ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from ..unit.test_ops_files import compose_header_commands
from .conftest import require
from .daemon import REPO
from .sites import free_port

pytestmark = pytest.mark.integration


def _local(command: list[str], control: int, upstream: int) -> list[str]:
    """The compose command with its addresses moved to loopback (every other flag as it is)."""
    argv = list(command)
    for flag, value in (("--listen", "127.0.0.1:0"), ("--upstream", f"127.0.0.1:{upstream}"),
                        ("--control", f"127.0.0.1:{control}")):
        argv[argv.index(flag) + 1] = value
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def test_documented_fault_proxy_command_stalls_the_lab_proxy() -> None:
    require("bash")
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["wan-proxy"]["command"]
    tips = compose_header_commands("wan-proxy")
    assert tips
    in_container = command[command.index("--control") + 1].replace(":", "/")
    control = free_port()
    proxy = subprocess.Popen(_local(command, control, free_port()), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO),
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proxy.stdout is not None
        started = []
        for line in proxy.stdout:  # the proxy prints its control address once it listens
            started.append(line)
            if line.startswith("faultproxy control on"):
                break
        assert started and started[-1].startswith("faultproxy control on"), "".join(started)

        def run(argv: list[str], word: str | None = None) -> str:
            script = argv[6].replace(f"/dev/tcp/{in_container}", f"/dev/tcp/127.0.0.1/{control}")
            if word is not None:
                script = script.replace("echo stall", f"echo {word}")
            r = subprocess.run(argv[4:6] + [script], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL, check=False)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        for argv in tips:  # never run a tip that does not go to the control port (the old one wrote to PID 1)
            assert argv[4:6] == ["bash", "-c"] and f"/dev/tcp/{in_container}" in argv[6], argv
            assert "echo stall" in argv[6], argv
            assert run(argv) == "ok"
            shown = run(argv, "show")
            assert "c2s " in shown and shown.count("stall=on") == 2, shown  # both directions hang
            assert run(argv, "resume") == "ok"
            assert run(argv, "show").count("stall=off") == 2
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.communicate()
    assert proxy.returncode == 0


"""``storaged --log-format json``: every line a JSON object, with who it is about as fields.

Real storaged processes, real initiators (libiscsi's iscsi-ls and iscsi-inq) and a real remote
link; the context fields must come from the connection that logged, so lines about one
initiator must never carry another's name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import TARGET, require, small_config
from .daemon import StoragedProcess, wait_for
from .sites import free_port, iqn, site_config

pytestmark = pytest.mark.integration

HOST = "iqn.2026-11.test:json-host"
STRANGER = "iqn.2026-11.test:stranger"
JSON = ["--log-format", "json"]


def parse_lines(proc: StoragedProcess) -> list[dict[str, Any]]:
    lines = [line for line in proc.log_lines if line.strip()]
    assert lines
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(obj, dict), line
        assert {"ts", "level", "logger", "message"} <= obj.keys(), line
        out.append(obj)
    return out


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


def test_iscsi_lines_carry_initiator_and_target(tmp_path: Path) -> None:
    require("iscsi-ls", "iscsi-inq")
    closed = {"name": "iqn.2026-11.io.storaged:closed", "initiators": [HOST],
              "luns": [{"lun": 0, "size": "16MiB", "file": "closed0.img"}]}
    config = small_config()
    config["targets"].append(closed)
    proc = StoragedProcess(tmp_path / "data", config, extra_args=JSON).start()
    try:
        ls = run("iscsi-ls", "-s", "-i", HOST, f"iscsi://127.0.0.1:{proc.port}")
        assert ls.returncode == 0, ls.stderr
        inq = run("iscsi-inq", "-i", HOST, proc.url(TARGET, 0))
        assert inq.returncode == 0, inq.stderr
        refused = run("iscsi-inq", "-i", STRANGER, proc.url(closed["name"], 0))
        assert refused.returncode != 0
        assert wait_for(lambda: "refused" in proc.log)
    finally:
        assert proc.stop() == 0
    lines = parse_lines(proc)
    logged_in = [x for x in lines if x["message"].startswith(f"{HOST} ") and " logged in to " in x["message"]]
    assert any(x.get("initiator") == HOST and x.get("target") == TARGET for x in logged_in), logged_in
    # the refused login names the stranger and the target it asked for, as fields
    refusals = [x for x in lines if "refused" in x["message"]]
    assert refusals and all(x.get("initiator") == STRANGER for x in refusals), refusals
    assert any(x.get("target") == closed["name"] and x["level"] == "WARNING" for x in refusals)
    # no line about the host is labelled with the stranger, or the reverse
    for x in lines:
        if HOST in x["message"]:
            assert x.get("initiator") in (HOST, None), x
        if STRANGER in x["message"]:
            assert x.get("initiator") in (STRANGER, None), x


def test_remote_link_lines_carry_the_peer(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    b = StoragedProcess(tmp_path / "b", site_config("site-b", "site-a", pb, pa), extra_args=JSON).start()
    try:
        a = StoragedProcess(tmp_path / "a", site_config("site-a", "site-b", pa, pb), extra_args=JSON).start()
        try:
            assert wait_for(lambda: "remote link to site-b is up" in a.log
                            and "authenticated" in b.log, 30), a.log[-2000:] + b.log[-2000:]
        finally:
            assert a.stop() == 0
    finally:
        assert b.stop() == 0
    a_lines, b_lines = parse_lines(a), parse_lines(b)
    up = [x for x in a_lines if "remote link to site-b is up" in x["message"]]
    assert up and all(x.get("peer") == "site-b" for x in up), up
    authenticated = [x for x in b_lines if "authenticated" in x["message"] and "site-a" in x["message"]]
    assert authenticated and all(x.get("peer") == "site-a" for x in authenticated), authenticated
    assert iqn("site-a") in a.log  # the targets line; it is about no connection: no peer field
    assert not any(x.get("peer") for x in a_lines if x["message"].startswith("target "))

"""The README's main job: storaged-lab brings up both arrays, drives site-b through site-a, forms a
pair and replicates. Run here on free ports with copies of configs/ (the real ones use 3260...)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .daemon import REPO
from .procs import group_members, kill_all
from .sites import free_port

pytestmark = pytest.mark.integration


def test_storaged_lab_once(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(REPO / "configs" / "lab-link-secret", configs)
    ports = {name: free_port() for name in ("a_iscsi", "b_iscsi", "a_link", "b_link", "a_metrics", "b_metrics")}
    for site, peer, mine in (("site-a", "site-b", "a"), ("site-b", "site-a", "b")):
        cfg = yaml.safe_load((REPO / "configs" / f"{site}.yaml").read_text())
        cfg["array"]["data_dir"] = str(tmp_path / site)
        cfg["iscsi"]["listen"] = f"127.0.0.1:{ports[mine + '_iscsi']}"
        cfg["remote"]["listen"] = f"127.0.0.1:{ports[mine + '_link']}"
        assert "listen" in (cfg.get("metrics") or {}), f"the lab's {site}.yaml does not turn metrics on"
        cfg["metrics"]["listen"] = f"127.0.0.1:{ports[mine + '_metrics']}"
        other = "b" if mine == "a" else "a"
        cfg["remote"]["peers"][0]["address"] = f"127.0.0.1:{ports[other + '_link']}"
        (configs / f"{site}.yaml").write_text(yaml.safe_dump(cfg))
    host = yaml.safe_load((REPO / "configs" / "host-a.yaml").read_text())
    host["local"]["command_device"] = host["local"]["command_device"].replace(":3260/", f":{ports['a_iscsi']}/")
    (configs / "host-a.yaml").write_text(yaml.safe_dump(host))
    # Its own session: if the lab hangs or dies, its two storaged children are killed with it.
    lab = subprocess.Popen([sys.executable, "-m", "storaged.lab", "--once", "--configs", str(configs),
                            "--logs", str(tmp_path / "logs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                           start_new_session=True)
    try:
        stdout, stderr = lab.communicate(timeout=300)
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait()
        left = group_members(lab.pid)
        kill_all(left)
    assert not left, f"storaged.lab left {left} running"
    assert lab.returncode == 0, stdout[-3000:] + stderr[-3000:]
    out = stdout + stderr  # paircreate --wait reports progress on stderr
    assert "array    site-a" in out and "array    site-b" in out  # hostctl info on both, from site-a
    assert "paircreate lab: PAIR 100%" in out
    assert "DONE" in out  # pairsyncwait: site-b restored what the host wrote
    # Both arrays' /metrics, as the lab prints them: the P-VOL's bytes, the link, the group on both sides.
    for site, port in (("site-a", ports["a_metrics"]), ("site-b", ports["b_metrics"])):
        block = out.split(f"curl -s http://127.0.0.1:{port}/metrics   # {site}", 1)[1].split("\n$ ", 1)[0]
        series = dict(line.rsplit(" ", 1) for line in block.splitlines()[1:] if line.startswith("storaged_"))
        assert any(name.startswith("storaged_link_up{") and value == "1" for name, value in series.items()), block
        assert 'storaged_group_rpo_seconds{group="lab"}' in series, block
        assert 'storaged_journal_used_ratio{group="lab"}' in series, block
        if site == "site-a":
            written = [int(v) for n, v in series.items() if n.startswith("storaged_lun_write_bytes_total{")]
            assert written and max(written) >= 16 << 20, block

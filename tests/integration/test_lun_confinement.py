"""A real storaged refuses a LUN file that a symbolic link takes out of the data directory, at
startup (exit 2, a configuration error naming the file and the field, nothing served or created)
and at reload (refused, nothing applied); tests/unit/test_lun_confinement.py has the cases."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import TARGET, small_config
from .daemon import StoragedProcess
from .test_reload import reload

pytestmark = pytest.mark.integration


def test_startup_refuses_a_lun_file_linked_out_of_the_data_dir(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "sub").symlink_to(outside, target_is_directory=True)
    cfg = small_config()
    cfg["targets"][0]["luns"][1]["file"] = "sub/lun1.img"
    proc = StoragedProcess(data, cfg)
    assert proc.config_path is not None
    # exits at once; the timeout only bounds a daemon that would start and serve instead
    run = subprocess.run(proc.args, capture_output=True, text=True, env=proc.env, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"storaged: configuration error: {proc.config_path}: targets[0].luns[1].file: "), \
        run.stderr
    assert "sub/lun1.img" in run.stderr and "outside the data directory" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(outside.iterdir()) == [] and not (data / "lun0.img").exists()  # nothing opened or created


def test_reload_refuses_a_new_lun_file_linked_out_of_the_data_dir(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    cfg = small_config()
    proc = StoragedProcess(data, cfg).start()
    try:
        (data / "escape.img").symlink_to(outside / "x.img")
        (outside / "x.img").write_bytes(bytes(1 << 20))
        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"].append({"lun": 2, "size": "1MiB", "file": "escape.img"})
        out = reload(proc, yaml.safe_dump(new))
        assert f"reload refused: {proc.config_path}: targets[0].luns[2].file: LUN 2 of {TARGET}: " in out, out
        assert "escape.img" in out and "outside the data directory" in out
        assert "nothing applied" in out and "Traceback" not in proc.log
        assert f"LUN 2 of {TARGET}: data, " not in proc.log  # never attached
    finally:
        proc.stop()

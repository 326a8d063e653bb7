"""metrics.listen in the config and --metrics-listen on the command line: off by default, errors
that name the file and field, the command line overriding the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storaged.config import ConfigError, default_config, load_config

REPO = Path(__file__).resolve().parents[3]
BASE = """
array: {name: m1, data_dir: data}
targets:
  - name: iqn.2026-11.io.storaged:m1
    luns: [{lun: 0, size: 1MiB}]
"""


def write(tmp_path: Path, extra: str) -> str:
    p = tmp_path / "array.yaml"
    p.write_text(BASE + extra)
    return str(p)


def test_off_unless_configured(tmp_path: Path) -> None:
    assert default_config().metrics.listen is None
    assert load_config(write(tmp_path, "")).metrics.listen is None
    assert load_config(write(tmp_path, "metrics: {listen: '127.0.0.1:9400'}\n")).metrics.listen == "127.0.0.1:9400"


@pytest.mark.parametrize("extra, field, problem", [
    ("metrics: {listen: 9400}\n", "metrics.listen", "expected str"),
    ("metrics: {listen: 'localhost'}\n", "metrics.listen", "expected HOST:PORT"),
    ("metrics: {listen: '127.0.0.1:70000'}\n", "metrics.listen", "expected HOST:PORT"),
    ("metrics: {port: 9400}\n", "metrics.port", "unknown key"),
    ("metrics: [1]\n", "metrics", "expected a mapping"),
])
def test_bad_metrics_section_names_the_field(tmp_path: Path, extra: str, field: str, problem: str) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: {field}: ") and problem in str(exc.value)


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "metrics: {listen: '127.0.0.1:9400'}\n"))
    assert cfg.with_overrides(metrics_listen="0.0.0.0:9500").metrics.listen == "0.0.0.0:9500"
    with pytest.raises(ConfigError, match="--metrics-listen: expected HOST:PORT"):
        cfg.with_overrides(metrics_listen="nope")


def test_bad_flag_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "storaged", "--data-dir", str(tmp_path), "--metrics-listen", "9400"],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.strip() == "storaged: configuration error: command line: --metrics-listen: expected HOST:PORT, " \
                                 "got '9400'"

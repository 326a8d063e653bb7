"""`storaged --check-config`: the loader plus what startup checks, without creating or changing files.

Errors name the file and the field; the exit status says whether the file would start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storaged.config import ConfigError, load_config
from storaged.configcheck import check_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
array: {name: site-a, data_dir: data}
iscsi: {listen: "127.0.0.1:3270"}
remote:
  peers:
    - {name: site-b, address: "127.0.0.1:3301", secret: sixteen-chars-secret}
targets:
  - name: iqn.2026-11.io.storaged:a
    luns:
      - {lun: 0, size: 1MiB}
      - {lun: 1, size: 2MiB, file: one.img}
      - {lun: 2, map: {array: site-b, lun: 0}}
"""


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "storaged", *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=60, check=False)


# --- loader defects the check relies on ------------------------------------------------------------

def test_non_ascii_serial_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    # Before: the loader took it and startup died with a ValueError traceback in LogicalUnit.
    path = write(tmp_path, GOOD.replace("{lun: 0, size: 1MiB}", '{lun: 0, size: 1MiB, serial: "caf\\u00e9"}'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: targets[0].luns[0].serial: ")


def test_duplicate_yaml_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    # Before: yaml.safe_load kept the last of two `size:` keys without a word.
    path = write(tmp_path, GOOD.replace("{lun: 1, size: 2MiB, file: one.img}", "{lun: 1, size: 2MiB, size: 1MiB}"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "duplicate key 'size'" in msg and "line 10" in msg, msg


@pytest.mark.parametrize("peers, field, problem", [
    (("[{name: site-b, address: '127.0.0.1:1', secret: sixteen-chars-secret}, "
      "{name: site-b, address: '127.0.0.1:2', secret: sixteen-chars-secret}]"), "remote.peers[1].name", "appears twice"),
    ("[{name: site-a, address: '127.0.0.1:1', secret: sixteen-chars-secret}]", "remote.peers[0].name",
     "this array's own name"),
])
def test_peer_names_are_unique_and_not_our_own(tmp_path: Path, peers: str, field: str, problem: str) -> None:
    text = GOOD.replace("      - {lun: 2, map: {array: site-b, lun: 0}}\n", "")
    text = text.replace("  peers:\n    - {name: site-b, address: \"127.0.0.1:3301\", secret: sixteen-chars-secret}",
                        f"  peers: {peers}")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {field}: ") and problem in str(info.value)


# --- check_config ----------------------------------------------------------------------------------

def test_good_file_has_no_problems_and_nothing_is_created(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert check_config(path) == []
    assert sorted(os.listdir(tmp_path)) == ["x.yaml"]  # no data dir, no LUN files


def test_existing_lun_file_larger_than_its_size_is_reported_like_startup_would(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    (tmp_path / "data").mkdir()
    big = tmp_path / "data" / "one.img"
    big.write_bytes(b"")
    os.truncate(big, 4 << 20)
    problems = check_config(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: targets[0].luns[1].size: ") and "4194304" in problems[0]
    assert big.stat().st_size == 4 << 20  # untouched


def test_lun_file_that_is_a_directory_or_has_no_parent(tmp_path: Path) -> None:
    (tmp_path / "data" / "lun0.img").mkdir(parents=True)
    text = GOOD.replace("file: one.img", f"file: {tmp_path}/missing/one.img, allow_outside_data_dir: true")
    problems = check_config(write(tmp_path, text))
    assert any(p.endswith("targets[0].luns[0].file: " + f"{tmp_path}/data/lun0.img is a directory")
               for p in problems), problems
    assert any("targets[0].luns[1].file: " in p and "does not exist" in p for p in problems), problems


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    problems = check_config(write(tmp_path, GOOD))
    assert problems == [f"{tmp_path / 'x.yaml'}: array.data_dir: {tmp_path / 'data'} is not a directory"]


def test_cli_ok_and_exit_zero(tmp_path: Path) -> None:
    r = run_cli("--check-config", write(tmp_path, GOOD))
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "ok", "")


def test_cli_bad_field_exit_two_naming_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("size: 2MiB", "size: 2 apples"))
    r = run_cli("--check-config", path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"storaged: {path}: targets[0].luns[1].size: expected a size"), r.stderr
    assert "Traceback" not in r.stderr


def test_cli_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    r = run_cli("--check-config", write(tmp_path, "array: {name: a\n"))
    assert r.returncode == 2 and "not valid YAML: line 2" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--check-config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and f"{tmp_path / 'nope.yaml'}: cannot read" in r.stderr


def test_cli_file_not_utf8_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("site-a", "caf\xe9").encode("latin-1"))
    r = run_cli("--check-config", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"storaged: {path}: not UTF-8 text"), r.stderr


def test_cli_applies_data_dir_override_as_startup_does(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    other = tmp_path / "other"
    other.mkdir()
    (other / "lun0.img").write_bytes(bytes(2 << 20))
    r = run_cli("--check-config", path, "--data-dir", str(other))
    assert r.returncode == 2 and "targets[0].luns[0].size: " in r.stderr and str(other) in r.stderr

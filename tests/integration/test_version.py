"""One version everywhere: pyproject.toml is the single source, and every CLI reports it.

The installed console scripts are run as subprocesses (not ``main()`` in-process), so what is
checked is what a user sees after ``pip install``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import TARGET
from .daemon import REPO, StoragedProcess

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _installed() -> str:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    installed = importlib.metadata.version("storaged")
    assert installed == declared, (
        f"installed metadata says {installed}, pyproject.toml {declared}: re-run `.venv/bin/pip install -e .`")
    return installed


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=60, cwd=str(REPO),
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_storaged_and_hostctl_version_flags_say_the_distribution_version() -> None:
    version = _installed()
    s = _run(str(BIN / "storaged"), "--version")
    h = _run(str(BIN / "hostctl"), "--version")
    assert (s.returncode, s.stdout.strip()) == (0, f"storaged {version}"), s.stderr
    assert (h.returncode, h.stdout.strip()) == (0, f"hostctl {version}"), h.stderr


def test_hostctl_info_shows_array_and_client_version(tmp_path: Path) -> None:
    version = _installed()
    config = {"array": {"name": "version-array"},
              "targets": [{"name": TARGET, "luns": [{"lun": 0, "size": "16MiB", "file": "lun0.img"},
                                                     {"lun": 1, "command_device": {}}]}]}
    proc = StoragedProcess(tmp_path / "data", config).start()
    try:
        r = _run(str(BIN / "hostctl"), "--device", proc.url(TARGET, 1), "info")
    finally:
        proc.stop()
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines()[:4] if len(line.split(None, 1)) == 2)
    assert fields.get("version") == version, r.stdout  # the array's storaged
    assert fields.get("hostctl") == version, r.stdout  # this client

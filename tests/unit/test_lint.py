"""Static checks that catch real bugs (undefined names, unused imports, syntax) in every module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_no_errors() -> None:
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9,UP041", "--no-cache",
                          "storaged", "hostctl", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

"""The whole daemon (replication core, simulator, SCSI, iSCSI, link, array) and hostctl stay mypy clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_storaged_and_hostctl_are_mypy_clean() -> None:
    run = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
                          "storaged", "hostctl"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

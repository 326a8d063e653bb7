from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon import StoragedProcess

TARGET = "iqn.2026-11.io.storaged:test"


def small_config(**target_extra: object) -> dict:
    """A target with a 64 MiB data LUN 0 and a 16 MiB LUN 1, open to all initiators."""
    target = {"name": TARGET, "luns": [{"lun": 0, "size": "64MiB", "file": "lun0.img"},
                                       {"lun": 1, "size": "16MiB", "file": "lun1.img"}]}
    target.update(target_extra)
    return {"array": {"name": "test-array"}, "targets": [target]}


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run ./setup.sh --test (installs libiscsi-bin, qemu-utils...)")


@pytest.fixture
def storaged(tmp_path: Path) -> Iterator[StoragedProcess]:
    proc = StoragedProcess(tmp_path / "data", small_config()).start()
    yield proc
    proc.stop()

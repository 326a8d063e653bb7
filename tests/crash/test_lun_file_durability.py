"""A LUN file created on first start survives a power cut: its directory entry is synced."""

from __future__ import annotations

from pathlib import Path

import pytest

from storaged import persist
from storaged.backstore.sparsefile import SparseFileBackstore


def test_a_new_lun_file_is_made_durable_in_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file gets an fsync of its directory (or a power cut can lose the file and everything
    written to it, FUA or not); reopening an existing file needs none."""
    synced: list[str] = []
    real = persist.fsync_dir

    def record(directory: str) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(persist, "fsync_dir", record)
    path = tmp_path / "lun.img"
    SparseFileBackstore(str(path), 1 << 20).close()
    assert synced == [str(tmp_path)]
    SparseFileBackstore(str(path), 1 << 20).close()
    assert synced == [str(tmp_path)]

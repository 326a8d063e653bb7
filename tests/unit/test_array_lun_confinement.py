"""The array opens its LUN files confined to the data directory (unless a LUN allows outside).

The config check resolves symbolic links before anything is opened; these tests stand for a link
swapped in after that check: the array itself must refuse to open (and grow) a file outside."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from storaged.array.array import Array
from storaged.backstore.base import BackstoreError
from storaged.config import default_config


def _config(tmp_path: Path, allow_outside: bool = False):  # type: ignore[no-untyped-def]
    cfg = default_config().with_overrides(listen="127.0.0.1:0", data_dir=str(tmp_path / "data"))
    target = cfg.targets[0]
    luns = [dataclasses.replace(lun, allow_outside_data_dir=allow_outside) if lun.lun == 0 else lun
            for lun in target.luns]
    return dataclasses.replace(cfg, targets=(dataclasses.replace(target, luns=tuple(luns)),))


def _link_lun0_outside(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    outside = tmp_path / "outside.img"
    outside.write_bytes(b"not a LUN")
    (tmp_path / "data" / "data0.img").symlink_to(outside)
    return outside


def test_the_array_refuses_a_lun_file_that_a_link_takes_outside(tmp_path: Path) -> None:
    outside = _link_lun0_outside(tmp_path)
    array = Array(_config(tmp_path))
    with pytest.raises(BackstoreError, match="outside the data directory"):
        array.open_luns()
    assert outside.read_bytes() == b"not a LUN"


def test_the_array_follows_the_link_when_the_lun_allows_outside(tmp_path: Path) -> None:
    outside = _link_lun0_outside(tmp_path)
    array = Array(_config(tmp_path, allow_outside=True))
    array.open_luns()
    try:
        assert outside.stat().st_size == 4 << 30  # opened and sized: it is this LUN's file now
    finally:
        array.close_stores()

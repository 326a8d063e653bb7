"""LUN addressing and LU identity validation (no I/O)."""

from __future__ import annotations

import pytest

from storaged.backstore.memory import MemoryBackstore
from storaged.scsi.lu import LogicalUnit
from storaged.scsi.target import decode_lun, encode_lun

from .conftest import BS, NAA


def test_lun_encoding_round_trips() -> None:
    for lun in (0, 1, 255, 256, 300, 0x3FFF):
        assert decode_lun(encode_lun(lun)) == lun


def test_lu_rejects_a_non_naa6_designator() -> None:
    with pytest.raises(ValueError):
        LogicalUnit(MemoryBackstore(BS * 8), naa=bytes(16), serial="x")


def test_lu_rejects_a_block_size_other_than_512_or_4096() -> None:
    with pytest.raises(ValueError):
        LogicalUnit(MemoryBackstore(BS * 8), naa=NAA, serial="x", block_size=1024)


def test_decode_lun_of_unsupported_address_method_is_absent() -> None:
    assert decode_lun(bytes((0x80, 1)) + bytes(6)) == -1

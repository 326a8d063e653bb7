"""Sense data builders (SPC-4 4.5): fixed and descriptor formats, INFORMATION, field pointers."""

from __future__ import annotations

import struct

from storaged.scsi.sense import SENSE_TABLE, Reason, build_sense, parse_sense


def test_every_reason_has_a_sense_code() -> None:
    assert set(SENSE_TABLE) == set(Reason)


def test_fixed_sense_layout() -> None:
    s = build_sense(Reason.LBA_OUT_OF_RANGE)
    assert len(s) == 18 and s[0] == 0x70 and s[2] == 0x05 and s[7] == 10 and (s[12], s[13]) == (0x21, 0)


def test_descriptor_sense_layout() -> None:
    s = build_sense(Reason.LBA_OUT_OF_RANGE, descriptor=True)
    assert s == bytes((0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0))


def test_fixed_information_field_sets_valid() -> None:
    s = build_sense(Reason.MISCOMPARE_DURING_VERIFY, info=1234)
    assert s[0] == 0xF0 and struct.unpack_from(">I", s, 3)[0] == 1234


def test_fixed_information_too_large_for_32_bits_clears_valid() -> None:
    s = build_sense(Reason.MISCOMPARE_DURING_VERIFY, info=1 << 40)
    assert s[0] == 0x70


def test_descriptor_information_descriptor() -> None:
    s = build_sense(Reason.MISCOMPARE_DURING_VERIFY, descriptor=True, info=1 << 40)
    assert s[7] == 12 and s[8:12] == bytes((0, 0x0A, 0x80, 0))
    assert struct.unpack_from(">Q", s, 12)[0] == 1 << 40


def test_field_pointer_in_cdb_with_bit() -> None:
    s = build_sense(Reason.INVALID_FIELD_IN_CDB, field=1, bit=7)
    assert s[15:18] == bytes((0x80 | 0x40 | 0x08 | 7, 0, 1))


def test_field_pointer_in_parameter_list_has_cd_clear() -> None:
    s = build_sense(Reason.INVALID_FIELD_IN_PARAM_LIST, field=300, in_cdb=False)
    assert s[15:18] == bytes((0x80, 1, 44))


def test_descriptor_sense_key_specific_descriptor() -> None:
    s = build_sense(Reason.INVALID_FIELD_IN_CDB, descriptor=True, field=2)
    assert s[7] == 8 and s[8:16] == bytes((0x02, 0x06, 0, 0, 0xC0, 0, 2, 0))


def test_parse_sense_reads_both_formats() -> None:
    for desc in (False, True):
        assert parse_sense(build_sense(Reason.RESERVATIONS_PREEMPTED, desc)) == (0x6, 0x2A, 0x03)

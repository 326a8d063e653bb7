"""SPC-2 RESERVE(6/10) / RELEASE(6/10) and their interplay with persistent reservations."""

from __future__ import annotations

import pytest

from .conftest import I1, I2, ILLEGAL_REQUEST, Initiator, assert_conflict, assert_good, assert_sense

pytestmark = pytest.mark.asyncio

RESERVE6 = bytes((0x16, 0, 0, 0, 0, 0))
RELEASE6 = bytes((0x17, 0, 0, 0, 0, 0))
RESERVE10 = bytes((0x56,)) + bytes(9)
RELEASE10 = bytes((0x57,)) + bytes(9)
MODE_SENSE6 = bytes((0x1A, 0, 0x3F, 0, 255, 0))


async def test_reserve_twice_from_the_holder_is_good(i1) -> None:
    assert_good(await i1.cmd(RESERVE6))
    assert_good(await i1.cmd(RESERVE6))


async def test_two_initiators(i1, i2) -> None:
    """libiscsi Reserve6.2Initiators, step by step."""
    assert_good(await i1.cmd(RESERVE6))
    assert_conflict(await i2.cmd(RESERVE6))
    assert_good(await i2.cmd(RELEASE6))  # not the holder: no effect, but GOOD
    assert_good(await i1.cmd(MODE_SENSE6))
    assert_conflict(await i2.cmd(MODE_SENSE6))
    assert_conflict(await i2.cmd(RESERVE6))
    assert_good(await i1.cmd(RELEASE6))
    assert_good(await i2.cmd(RESERVE6))
    assert_good(await i2.cmd(RELEASE6))


async def test_other_nexus_may_inquire_and_request_sense_but_not_read(i1, i2) -> None:
    assert_good(await i1.cmd(RESERVE10))
    assert_good(await i2.cmd(bytes((0x12, 0, 0, 0, 36, 0))))
    assert_good(await i2.cmd(bytes((0x03, 0, 0, 0, 18, 0))))
    assert_conflict(await i2.cmd(bytes(6)))
    assert_conflict(await i2.read10(0, 1))
    assert_conflict(await i2.prin(0))


async def test_persistent_reserve_commands_conflict_with_spc2_reservation_even_from_holder(i1) -> None:
    assert_good(await i1.cmd(RESERVE6))
    assert_conflict(await i1.prin(0))
    assert_good(await i1.cmd(RELEASE6))
    assert_good(await i1.prin(0))


async def test_reserve_conflicts_when_registrations_exist(i1, i2) -> None:
    assert_good(await i2.prout(6, sarkey=0x99))
    assert_conflict(await i1.cmd(RESERVE6))
    assert_conflict(await i1.cmd(RELEASE10))


@pytest.mark.parametrize("how", ["nexus_lost", "lun_reset", "warm_reset", "cold_reset"])
async def test_reservation_is_released_by(target, i1, i2, how) -> None:
    assert_good(await i1.cmd(RESERVE6))
    if how == "nexus_lost":
        target.nexus_lost(I1)
    elif how == "lun_reset":
        target.reset_lun(0, I1)
    else:
        target.reset_target(I1, cold=how == "cold_reset")
    await i2.clear_ua()
    assert_good(await i2.cmd(RESERVE6))
    assert_good(await i2.cmd(RELEASE6))


async def test_third_party_reserve_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(bytes((0x56, 0x10)) + bytes(8)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_reservation_holder_keeps_full_access(i1) -> None:
    assert_good(await i1.cmd(RESERVE6))
    assert_good(await i1.write10(0, bytes(512)))
    assert_good(await i1.read10(0, 1))


async def test_nexus_with_same_initiator_but_other_isid_conflicts(target, i1) -> None:
    from storaged.scsi.types import Nexus

    other = Initiator(target, Nexus(I1.initiator, bytes.fromhex("400001370099"), I1.target, I1.tpgt))
    await other.clear_ua()
    assert_good(await i1.cmd(RESERVE6))
    assert_conflict(await other.read10(0, 1))
    assert I2 != other.nexus

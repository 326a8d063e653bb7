"""Unit attention conditions (SPC-4 5.14, SAM-5 5.14): per nexus, reported once, exemptions."""

from __future__ import annotations

import struct

import pytest

from storaged.scsi.sense import Reason

from .conftest import I1, I2, UNIT_ATTENTION, Initiator, assert_good, assert_sense, cdb10

pytestmark = pytest.mark.asyncio


async def test_new_nexus_first_command_gets_power_on_reset(target) -> None:
    ini = Initiator(target, I1)
    assert_sense(await ini.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x00)
    assert_good(await ini.cmd(bytes(6)))


async def test_inquiry_does_not_report_or_clear_a_unit_attention(target) -> None:
    ini = Initiator(target, I1)
    assert_good(await ini.cmd(bytes((0x12, 0, 0, 0, 96, 0))))
    assert_sense(await ini.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x00)


async def test_report_luns_is_exempt_from_unit_attention(target) -> None:
    ini = Initiator(target, I1)
    assert_good(await ini.cmd(struct.pack(">BxBxxxIxx", 0xA0, 0, 64)))
    assert_sense(await ini.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x00)


async def test_request_sense_returns_and_clears_the_unit_attention(target) -> None:
    ini = Initiator(target, I1)
    res = await ini.cmd(bytes((0x03, 0, 0, 0, 18, 0)))
    assert_good(res)
    assert (res.data[2], res.data[12], res.data[13]) == (UNIT_ATTENTION, 0x29, 0x00)
    res = await ini.cmd(bytes((0x03, 0, 0, 0, 18, 0)))
    assert (res.data[2], res.data[12], res.data[13]) == (0, 0, 0)  # NO SENSE
    assert_good(await ini.cmd(bytes(6)))


async def test_request_sense_desc_bit_returns_descriptor_format(target) -> None:
    ini = Initiator(target, I1)
    res = await ini.cmd(bytes((0x03, 0x01, 0, 0, 252, 0)))
    assert res.data[0] == 0x72 and res.data[1:4] == bytes((UNIT_ATTENTION, 0x29, 0x00))


async def test_unit_attentions_are_per_nexus(target, i1) -> None:
    ini2 = Initiator(target, I2)
    assert_good(await i1.cmd(bytes(6)))
    assert_sense(await ini2.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x00)


async def test_unit_attention_is_reported_before_reservation_conflict(target, i1, lu) -> None:
    assert_good(await i1.cmd(bytes((0x16, 0, 0, 0, 0, 0))))  # RESERVE(6)
    ini2 = Initiator(target, I2)
    assert_sense(await ini2.read10(0, 1), UNIT_ATTENTION, 0x29, 0x00)
    assert (await ini2.read10(0, 1)).status == 0x18


async def test_lun_reset_raises_bus_device_reset_on_every_nexus_including_the_issuer(target, i1, i2) -> None:
    target.reset_lun(0, by=I1)
    assert_sense(await i1.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x03)
    assert_sense(await i2.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x03)
    assert_good(await i1.cmd(bytes(6)))


async def test_target_cold_reset_reports_power_on(target, i1) -> None:
    target.reset_target(I1, cold=True)
    assert_sense(await i1.cmd(bytes(6)), UNIT_ATTENTION, 0x29, 0x01)


async def test_nexus_lost_drops_its_pending_unit_attentions(target, lu) -> None:
    target.nexus_added(I1)
    assert lu.pending_ua(I1) == [Reason.POWER_ON_RESET]
    target.nexus_lost(I1)
    assert lu.pending_ua(I1) == []


async def test_same_unit_attention_is_queued_once(target, lu, i1) -> None:
    target.reset_lun(0)
    target.reset_lun(0)
    assert lu.pending_ua(I1) == [Reason.BUS_DEVICE_RESET]


async def test_adding_a_lun_reports_luns_data_changed(target, i1) -> None:
    from .conftest import NAA2, make_lu

    target.add_lun(1, make_lu(naa=NAA2))
    assert_sense(await i1.cmd(bytes(6)), UNIT_ATTENTION, 0x3F, 0x0E)


async def test_report_luns_clears_luns_data_changed(target, i1) -> None:
    from .conftest import NAA2, make_lu

    target.add_lun(1, make_lu(naa=NAA2))
    assert_good(await i1.cmd(struct.pack(">BxBxxxIxx", 0xA0, 0, 64)))
    assert_good(await i1.cmd(bytes(6)))


async def test_unit_attention_uses_descriptor_sense_when_d_sense_is_set(target, i1, lu) -> None:
    lu.modes.current[0x0A][2] |= 0x04
    lu.modes.sync_lu()
    target.reset_lun(0)
    res = await i1.cmd(cdb10(0x28, 0, 1))
    assert res.sense[0] == 0x72
    assert_sense(res, UNIT_ATTENTION, 0x29, 0x03)

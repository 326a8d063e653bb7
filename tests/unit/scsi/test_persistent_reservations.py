"""PERSISTENT RESERVE IN/OUT (SPC-4 5.13, 6.15, 6.16): registration, types, conflicts, UAs."""

from __future__ import annotations

import struct

import pytest

from storaged.scsi.types import Status

from .conftest import (
    I1,
    I3,
    ILLEGAL_REQUEST,
    UNIT_ATTENTION,
    Initiator,
    assert_conflict,
    assert_good,
    assert_sense,
    cdb10,
)

pytestmark = pytest.mark.asyncio

REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_AND_IGNORE = range(7)
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
K1, K2, K3 = 0x1111, 0x2222, 0x3333


async def register(ini: Initiator, key: int) -> None:
    assert_good(await ini.prout(REGISTER_AND_IGNORE, sarkey=key))


async def read_ok(ini: Initiator) -> bool:
    res = await ini.read10(1, 1)
    assert res.status in (Status.GOOD, Status.RESERVATION_CONFLICT)
    return res.status == Status.GOOD


async def write_ok(ini: Initiator) -> bool:
    res = await ini.write10(1, bytes(512))
    assert res.status in (Status.GOOD, Status.RESERVATION_CONFLICT)
    return res.status == Status.GOOD


async def test_register_then_read_keys_lists_the_key(i1) -> None:
    await register(i1, K1)
    gen, keys = await i1.read_keys()
    assert keys == [K1] and gen == 1


async def test_register_with_wrong_existing_key_conflicts(i1) -> None:
    await register(i1, K1)
    assert_conflict(await i1.prout(REGISTER, rkey=K1 + 1, sarkey=K2))


async def test_register_unregistered_nexus_with_nonzero_key_conflicts(i1) -> None:
    assert_conflict(await i1.prout(REGISTER, rkey=K1, sarkey=K2))


async def test_register_zero_key_unregisters(i1) -> None:
    await register(i1, K1)
    assert_good(await i1.prout(REGISTER, rkey=K1, sarkey=0))
    assert (await i1.read_keys())[1] == []


async def test_reserve_requires_registration(i1) -> None:
    assert_conflict(await i1.prout(RESERVE, rkey=K1, rtype=WE))


async def test_reserve_with_wrong_key_conflicts(i1) -> None:
    await register(i1, K1)
    assert_conflict(await i1.prout(RESERVE, rkey=K2, rtype=WE))


@pytest.mark.parametrize("rtype", [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR])
async def test_reserve_read_reservation_release_each_type(i1, rtype) -> None:
    await register(i1, K1)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=rtype))
    expected_key = 0 if rtype in (WE_AR, EA_AR) else K1
    assert await i1.read_reservation() == (expected_key, rtype)
    assert_good(await i1.prout(RELEASE, rkey=K1, rtype=rtype))
    assert await i1.read_reservation() is None


async def test_reserve_does_not_bump_generation_but_clear_does(i1) -> None:
    await register(i1, K1)
    gen0, _ = await i1.read_keys()
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=EA))
    assert (await i1.read_keys())[0] == gen0
    assert_good(await i1.prout(CLEAR, rkey=K1))
    gen1, keys = await i1.read_keys()
    assert gen1 == gen0 + 1 and keys == []
    assert await i1.read_reservation() is None


async def test_second_reserve_by_other_nexus_conflicts(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE))
    assert_conflict(await i2.prout(RESERVE, rkey=K2, rtype=WE))


async def test_release_with_wrong_type_is_invalid_release(i1) -> None:
    await register(i1, K1)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE))
    assert_sense(await i1.prout(RELEASE, rkey=K1, rtype=EA), ILLEGAL_REQUEST, 0x26, 0x04)


# (type, registered i2 can read, can write, unregistered i2 can read, can write) -- SPC-4 table 63
ACCESS = [
    (WE, True, False, True, False),
    (EA, False, False, False, False),
    (WE_RO, True, True, True, False),
    (EA_RO, True, True, False, False),
    (WE_AR, True, True, True, False),
    (EA_AR, True, True, False, False),
]


@pytest.mark.parametrize("rtype,reg_r,reg_w,unreg_r,unreg_w", ACCESS)
async def test_reservation_access_table(i1, i2, rtype, reg_r, reg_w, unreg_r, unreg_w) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=rtype))
    assert await read_ok(i1) and await write_ok(i1)
    assert await read_ok(i2) == reg_r
    assert await write_ok(i2) == reg_w
    assert_good(await i2.prout(REGISTER, rkey=K2, sarkey=0))
    assert await read_ok(i2) == unreg_r
    assert await write_ok(i2) == unreg_w


@pytest.mark.parametrize("rtype", [WE, EA, WE_RO, EA_RO])
async def test_holder_unregistering_releases_the_reservation(i1, i2, rtype) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=rtype))
    assert_good(await i1.prout(REGISTER, rkey=K1, sarkey=0))
    assert await i1.read_reservation() is None


async def test_registrants_only_release_by_unregistration_notifies_registrants(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE_RO))
    assert_good(await i1.prout(REGISTER, rkey=K1, sarkey=0))
    assert_sense(await i2.cmd(bytes(6)), UNIT_ATTENTION, 0x2A, 0x04)


@pytest.mark.parametrize("rtype", [WE_AR, EA_AR])
async def test_all_registrants_reservation_survives_one_unregistering(i1, i2, rtype) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=rtype))
    assert_good(await i1.prout(REGISTER, rkey=K1, sarkey=0))
    assert await i1.read_reservation() == (0, rtype)
    assert_good(await i2.prout(RELEASE, rkey=K2, rtype=rtype))
    assert await i1.read_reservation() is None


async def test_all_registrants_reservation_ends_with_the_last_registrant(i1, i2) -> None:
    await register(i1, K1)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE_AR))
    assert_good(await i1.prout(REGISTER, rkey=K1, sarkey=0))
    assert await i1.read_reservation() is None


async def test_release_of_registrants_only_type_notifies_other_registrants(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=EA_RO))
    assert_good(await i1.prout(RELEASE, rkey=K1, rtype=EA_RO))
    assert_sense(await i2.cmd(bytes(6)), UNIT_ATTENTION, 0x2A, 0x04)
    assert_good(await i1.cmd(bytes(6)))


async def test_release_of_write_exclusive_raises_no_unit_attention(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE))
    assert_good(await i1.prout(RELEASE, rkey=K1, rtype=WE))
    assert_good(await i2.cmd(bytes(6)))


async def test_clear_notifies_other_registrants_reservations_preempted(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(CLEAR, rkey=K1))
    assert_sense(await i2.cmd(bytes(6)), UNIT_ATTENTION, 0x2A, 0x03)
    assert_good(await i1.cmd(bytes(6)))


async def test_preempt_without_reservation_removes_registration_and_bumps_generation(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    gen0, _ = await i1.read_keys()
    assert_good(await i2.prout(PREEMPT, rkey=K2, sarkey=K1, rtype=EA))
    gen1, keys = await i2.read_keys()
    assert keys == [K2] and gen1 == gen0 + 1
    assert_sense(await i1.cmd(bytes(6)), UNIT_ATTENTION, 0x2A, 0x05)
    assert await i2.read_reservation() is None


async def test_preempt_of_holder_takes_over_the_reservation(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE))
    assert_good(await i2.prout(PREEMPT, rkey=K2, sarkey=K1, rtype=EA))
    assert await i2.read_reservation() == (K2, EA)
    assert (await i2.read_keys())[1] == [K2]
    assert_sense(await i1.cmd(bytes(6)), UNIT_ATTENTION, 0x2A, 0x05)
    assert_conflict(await i1.read10(0, 1))


async def test_preempt_of_unknown_key_conflicts(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_conflict(await i2.prout(PREEMPT, rkey=K2, sarkey=K3, rtype=WE))


async def test_preempt_with_zero_key_under_holder_reservation_is_invalid_field(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE))
    assert_sense(await i2.prout(PREEMPT, rkey=K2, sarkey=0, rtype=WE), ILLEGAL_REQUEST, 0x26, 0x00)


async def test_preempt_all_registrants_with_zero_key_removes_everyone_else(target, i1, i2) -> None:
    i3 = Initiator(target, I3)
    await i3.clear_ua()
    await register(i1, K1)
    await register(i2, K2)
    await register(i3, K3)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=EA_AR))
    assert_good(await i2.prout(PREEMPT, rkey=K2, sarkey=0, rtype=WE))
    assert (await i2.read_keys())[1] == [K2]
    assert await i2.read_reservation() == (K2, WE)


async def test_preempt_and_abort_calls_the_abort_hook(lu, i1, i2) -> None:
    aborted = []
    lu.pr.on_abort = aborted.append
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=EA))
    assert_good(await i2.prout(PREEMPT_AND_ABORT, rkey=K2, sarkey=K1, rtype=EA))
    assert aborted == [[I1]]


async def test_aptpl_is_rejected_as_invalid_field_in_parameter_list(i1) -> None:
    res = await i1.prout(REGISTER_AND_IGNORE, sarkey=K1, flags=0x01)
    assert_sense(res, ILLEGAL_REQUEST, 0x26, 0x00)
    assert res.sense[15] & 0x40 == 0  # C/D = 0: the parameter list


async def test_prout_parameter_list_length_must_be_24(i1) -> None:
    res = await i1.cmd(struct.pack(">BBBxxIB", 0x5F, REGISTER_AND_IGNORE, 0, 20, 0), bytes(20))
    assert_sense(res, ILLEGAL_REQUEST, 0x1A, 0x00)


async def test_prout_scope_other_than_lu_is_invalid_field(i1) -> None:
    await register(i1, K1)
    assert_sense(await i1.prout(RESERVE, rkey=K1, rtype=0x10 | WE), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_prout_invalid_type_is_invalid_field(i1) -> None:
    await register(i1, K1)
    assert_sense(await i1.prout(RESERVE, rkey=K1, rtype=2), ILLEGAL_REQUEST, 0x24, 0x00)


@pytest.mark.parametrize("sa", [0, 1, 2, 3])
async def test_prin_service_actions_0_to_3_succeed(i1, sa) -> None:
    assert_good(await i1.prin(sa))


@pytest.mark.parametrize("sa", range(4, 0x20))
async def test_prin_other_service_actions_fail(i1, sa) -> None:
    assert_sense(await i1.prin(sa), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_prin_read_keys_truncates_but_keeps_additional_length(i1) -> None:
    await register(i1, K1)
    res = await i1.prin(0, alloc=8)
    assert len(res.data) == 8 and struct.unpack_from(">I", res.data, 4)[0] == 8


async def test_report_capabilities(i1) -> None:
    res = await i1.prin(2)
    assert_good(res)
    data = bytes(res.data)
    assert struct.unpack_from(">H", data)[0] == 8
    assert data[2] & 0x01 == 0  # PTPL_C: APTPL not supported
    assert (data[3] >> 4) & 7 <= 5
    assert data[4:6] == bytes((0xEA, 0x01))


async def test_read_full_status_shows_holder_and_transport_id(i1, i2) -> None:
    await register(i1, K1)
    await register(i2, K2)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE_RO))
    data = bytes((await i1.prin(3)).data)
    gen, length = struct.unpack_from(">II", data)
    assert length == len(data) - 8
    key, flags, scope_type, rel_port, tid_len = struct.unpack_from(">Q4xBB4xHI", data, 8)
    assert (key, flags & 1, scope_type, rel_port) == (K1, 1, WE_RO, 1)
    tid = data[32 : 32 + tid_len]
    assert tid == I1.transport_id()
    key2, flags2 = struct.unpack_from(">Q4xB", data, 32 + tid_len)
    assert (key2, flags2 & 1) == (K2, 0)


async def test_unregistered_nexus_can_read_reservation_under_exclusive_access(i1, i2) -> None:
    await register(i1, K1)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=EA))
    assert await i2.read_reservation() == (K1, EA)
    assert_good(await i2.cmd(bytes((0x12, 0, 0, 0, 36, 0))))
    assert_good(await i2.cmd(bytes(6)))  # TEST UNIT READY is allowed
    assert_conflict(await i2.cmd(bytes((0x1A, 0, 0x3F, 0, 255, 0))))  # MODE SENSE is not (EA)
    assert_conflict(await i2.cmd(cdb10(0x35)))


async def test_mode_sense_is_allowed_under_write_exclusive(i1, i2) -> None:
    await register(i1, K1)
    assert_good(await i1.prout(RESERVE, rkey=K1, rtype=WE))
    assert_good(await i2.cmd(bytes((0x1A, 0, 0x3F, 0, 255, 0))))


async def test_cold_reset_forgets_registrations(target, i1) -> None:
    await register(i1, K1)
    target.reset_target(I1, cold=True)
    await i1.clear_ua()
    assert (await i1.read_keys())[1] == []


async def test_registrations_survive_nexus_loss(target, i1) -> None:
    await register(i1, K1)
    target.nexus_lost(I1)
    await i1.clear_ua()
    assert (await i1.read_keys())[1] == [K1]

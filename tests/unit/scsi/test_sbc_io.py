"""READ / WRITE / VERIFY / WRITE AND VERIFY / SYNCHRONIZE CACHE / PRE-FETCH (SBC-3 5.x)."""

from __future__ import annotations

import struct

import pytest

from storaged.scsi.types import Status

from .conftest import (
    BLOCKS,
    BS,
    DATA_PROTECT,
    ILLEGAL_REQUEST,
    MISCOMPARE,
    assert_good,
    assert_sense,
    cdb6,
    cdb10,
    cdb12,
    cdb16,
    make_lu,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    "wop,rop,build",
    [(0x2A, 0x28, cdb10), (0xAA, 0xA8, cdb12), (0x8A, 0x88, cdb16), (0x0A, 0x08, cdb6)],
    ids=["10", "12", "16", "6"],
)
async def test_write_then_read_returns_the_same_blocks(i1, wop, rop, build) -> None:
    payload = bytes(range(256)) * (3 * BS // 256)
    assert_good(await i1.cmd(build(wop, 100, 3), payload))
    res = await i1.cmd(build(rop, 100, 3))
    assert_good(res)
    assert bytes(res.data) == payload


async def test_unwritten_blocks_read_as_zeros(i1) -> None:
    res = await i1.read10(7, 2)
    assert bytes(res.data) == bytes(2 * BS)


async def test_read6_transfer_length_zero_means_256_blocks(i1) -> None:
    res = await i1.cmd(cdb6(0x08, 0, 0))
    assert_good(res)
    assert len(res.data) == 256 * BS


@pytest.mark.parametrize(
    "build,op", [(cdb10, 0x28), (cdb12, 0xA8), (cdb16, 0x88), (cdb10, 0x2A), (cdb16, 0x8A)]
)
async def test_transfer_length_zero_is_a_good_no_op(i1, build, op) -> None:
    res = await i1.cmd(build(op, 0, 0))
    assert_good(res)
    assert not res.data


@pytest.mark.parametrize(
    "lba,n", [(BLOCKS, 1), (BLOCKS - 1, 2), (BLOCKS + 1, 0), (0xFFFFFFFF, 1), (0x80000000, 1)]
)
async def test_read10_past_the_end_is_lba_out_of_range(i1, lba, n) -> None:
    assert_sense(await i1.cmd(cdb10(0x28, lba, n)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_read16_lba_wrapping_64_bits_is_out_of_range(i1) -> None:
    assert_sense(await i1.cmd(cdb16(0x88, 0xFFFFFFFFFFFFFFFF, 2)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_write_past_the_end_is_lba_out_of_range(i1) -> None:
    assert_sense(await i1.write10(BLOCKS - 1, bytes(2 * BS)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_last_block_is_addressable(i1) -> None:
    assert_good(await i1.write10(BLOCKS - 1, b"z" * BS))
    assert bytes((await i1.read10(BLOCKS - 1, 1)).data) == b"z" * BS


@pytest.mark.parametrize("prot", range(1, 8))
async def test_rdprotect_without_protection_information_is_invalid_field(i1, prot) -> None:
    res = await i1.cmd(cdb10(0x28, 0, 1, prot << 5))
    assert_sense(res, ILLEGAL_REQUEST, 0x24, 0x00)
    assert res.sense[15] & 0xC0 == 0xC0 and res.sense[17] == 1  # SKSV, C/D=1, field byte 1


@pytest.mark.parametrize("prot", range(1, 8))
async def test_wrprotect_without_protection_information_is_invalid_field(i1, prot) -> None:
    assert_sense(await i1.cmd(cdb10(0x2A, 0, 1, prot << 5), bytes(BS)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_dpo_and_fua_are_accepted(i1, lu) -> None:
    before = lu.backstore.flushes
    assert_good(await i1.write10(0, b"f" * BS, b1=0x18))
    assert lu.backstore.flushes == before + 1  # FUA wrote through
    assert_good(await i1.cmd(cdb10(0x28, 0, 1, 0x18)))


async def test_write_without_fua_does_not_flush(i1, lu) -> None:
    before = lu.backstore.flushes
    assert_good(await i1.write10(0, b"f" * BS))
    assert lu.backstore.flushes == before


async def test_transfer_longer_than_block_limits_is_invalid_field() -> None:
    from storaged.scsi.lu import BlockLimits
    from storaged.scsi.target import ScsiTarget

    from .conftest import I1, Initiator

    ini = Initiator(ScsiTarget("t", {0: make_lu(limits=BlockLimits(max_transfer_bytes=4 * BS))}), I1)
    await ini.clear_ua()
    assert_good(await ini.cmd(cdb16(0x88, 0, 4)))
    res = await ini.cmd(cdb16(0x88, 0, 5))
    assert_sense(res, ILLEGAL_REQUEST, 0x24, 0x00)
    assert res.sense[17] == 10  # field pointer: TRANSFER LENGTH


async def test_short_data_out_writes_only_whole_blocks_and_reports_spdtl(i1) -> None:
    assert_good(await i1.write10(0, b"a" * 2 * BS))
    res = await i1.cmd(cdb10(0x2A, 0, 2), b"b" * BS)
    assert_good(res)
    assert res.extra["spdtl"] == 2 * BS
    assert bytes((await i1.read10(0, 2)).data) == b"b" * BS + b"a" * BS


async def test_long_data_out_writes_only_what_the_cdb_asked(i1) -> None:
    assert_good(await i1.write10(0, b"a" * 2 * BS))
    res = await i1.cmd(cdb10(0x2A, 0, 1), b"b" * 2 * BS)
    assert_good(res)
    assert res.extra["spdtl"] == BS
    assert bytes((await i1.read10(0, 2)).data) == b"b" * BS + b"a" * BS


async def test_read_only_lu_rejects_writes_with_write_protected(target) -> None:
    from storaged.scsi.target import ScsiTarget

    from .conftest import I1, Initiator

    ro = ScsiTarget("t", {0: make_lu(read_only=True)})
    ini = Initiator(ro, I1)
    await ini.clear_ua()
    assert_sense(await ini.write10(0, bytes(BS)), DATA_PROTECT, 0x27, 0x00)
    assert_good(await ini.read10(0, 1))


# --- VERIFY / WRITE AND VERIFY -------------------------------------------------------------


async def test_verify_bytchk1_matching_data_is_good(i1) -> None:
    assert_good(await i1.write10(10, b"v" * 2 * BS))
    assert_good(await i1.cmd(cdb10(0x2F, 10, 2, 0x02), b"v" * 2 * BS))


async def test_verify_mismatch_reports_miscompare_with_byte_offset(i1) -> None:
    assert_good(await i1.write10(10, b"v" * 2 * BS))
    data = bytearray(b"v" * 2 * BS)
    data[BS + 17] ^= 0xFF
    res = await i1.cmd(cdb16(0x8F, 10, 2, 0x02), bytes(data))
    assert_sense(res, MISCOMPARE, 0x1D, 0x00)
    assert res.sense[0] & 0x80  # VALID
    assert struct.unpack_from(">I", res.sense, 3)[0] == BS + 17


async def test_verify_bytchk0_does_not_compare(i1) -> None:
    assert_good(await i1.cmd(cdb10(0x2F, 0, 4, 0x00), b"junk" * BS))


async def test_verify_bytchk3_compares_one_block_against_each(i1) -> None:
    assert_good(await i1.write10(0, b"s" * 3 * BS))
    assert_good(await i1.cmd(cdb12(0xAF, 0, 3, 0x06), b"s" * BS))
    assert_good(await i1.write10(2, b"t" * BS))
    assert_sense(await i1.cmd(cdb12(0xAF, 0, 3, 0x06), b"s" * BS), MISCOMPARE, 0x1D, 0x00)


async def test_verify_with_vrprotect_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(cdb10(0x2F, 0, 1, 0x22), bytes(BS)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_verify_beyond_end_is_lba_out_of_range(i1) -> None:
    assert_sense(await i1.cmd(cdb10(0x2F, BLOCKS + 1, 0, 0x02)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_write_and_verify_writes_through(i1, lu) -> None:
    before = lu.backstore.flushes
    assert_good(await i1.cmd(cdb10(0x2E, 3, 1, 0x02), b"w" * BS))
    assert lu.backstore.flushes == before + 1
    assert bytes((await i1.read10(3, 1)).data) == b"w" * BS


# --- caches --------------------------------------------------------------------------------


async def test_synchronize_cache_flushes_the_backstore(i1, lu) -> None:
    before = lu.backstore.flushes
    assert_good(await i1.cmd(cdb10(0x35, 0, 0)))
    assert_good(await i1.cmd(cdb16(0x91, 0, 0)))
    assert lu.backstore.flushes == before + 2


async def test_synchronize_cache_beyond_end_is_lba_out_of_range(i1) -> None:
    assert_sense(await i1.cmd(cdb10(0x35, BLOCKS - 1, 2)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_prefetch_returns_condition_met(i1) -> None:
    assert (await i1.cmd(cdb10(0x34, 0, 8))).status == Status.CONDITION_MET
    assert_sense(await i1.cmd(cdb16(0x90, BLOCKS, 1)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_read_defect_data_returns_an_empty_list(i1) -> None:
    res = await i1.cmd(bytes((0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0)))
    assert_good(res)
    assert bytes(res.data) == bytes((0, 0x18, 0, 0))
    res = await i1.cmd(struct.pack(">BBxxxxIBB", 0xB7, 0x18, 32, 0, 0))
    assert bytes(res.data) == bytes((0, 0x18)) + bytes(6)


async def test_unknown_opcode_is_invalid_command_operation_code(i1) -> None:
    assert_sense(await i1.cmd(bytes((0xC7,)) + bytes(9)), ILLEGAL_REQUEST, 0x20, 0x00)


async def test_test_unit_ready_reports_not_ready_when_the_backstore_is_unreachable(i1, lu, monkeypatch) -> None:
    from .conftest import NOT_READY

    monkeypatch.setattr(type(lu.backstore), "available", property(lambda self: False))
    assert_sense(await i1.cmd(bytes(6)), NOT_READY, 0x08, 0x00)
    monkeypatch.undo()
    assert_good(await i1.cmd(bytes(6)))


async def test_backstore_full_is_space_allocation_failed(i1, lu) -> None:
    from storaged.backstore.base import BackstoreFull

    async def full(*args, **kw):
        raise BackstoreFull("ENOSPC")

    lu.backstore.write = full
    assert_sense(await i1.write10(0, bytes(BS)), DATA_PROTECT, 0x27, 0x07)


async def test_backstore_error_is_medium_error(i1, lu) -> None:
    from storaged.backstore.base import BackstoreError, BackstoreUnavailable

    from .conftest import MEDIUM_ERROR, NOT_READY

    async def broken(*args, **kw):
        raise BackstoreError("EIO")

    async def gone(*args, **kw):
        raise BackstoreUnavailable("link down")

    lu.backstore.read = broken
    assert_sense(await i1.read10(0, 1), MEDIUM_ERROR, 0x11, 0x00)
    lu.backstore.read = gone
    assert_sense(await i1.read10(0, 1), NOT_READY, 0x08, 0x00)

"""MODE SENSE / MODE SELECT (SPC-4 6.11-6.14) and the Control page's effect on sense format."""

from __future__ import annotations

import struct

import pytest

from .conftest import (
    BLOCKS,
    BS,
    DATA_PROTECT,
    ILLEGAL_REQUEST,
    UNIT_ATTENTION,
    assert_good,
    assert_sense,
    cdb16,
)

pytestmark = pytest.mark.asyncio


def sense6(page: int, pc: int = 0, dbd: bool = False, alloc: int = 255, subpage: int = 0) -> bytes:
    return bytes((0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0))


def sense10(page: int, pc: int = 0, llbaa: bool = False, alloc: int = 1024) -> bytes:
    return struct.pack(">BBBBxxxHB", 0x5A, 0x10 if llbaa else 0, (pc << 6) | page, 0, alloc, 0)


def pages_of(data: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset < len(data):
        code, length = data[offset] & 0x3F, data[offset + 1]
        out[code] = data[offset : offset + 2 + length]
        offset += 2 + length
    return out


async def select6(ini, page: bytes, sp: bool = False):
    param = bytes(4) + page
    return await ini.cmd(bytes((0x15, 0x10 | (1 if sp else 0), 0, 0, len(param), 0)), param)


async def control_page(ini) -> bytearray:
    res = await ini.cmd(sense6(0x0A, dbd=True))
    return bytearray(pages_of(bytes(res.data), 4)[0x0A])


async def test_all_pages_has_header_block_descriptor_and_pages(i1) -> None:
    res = await i1.cmd(sense6(0x3F))
    data = bytes(res.data)
    assert data[0] == len(data) - 1
    assert data[2] & 0x10  # DPOFUA
    assert data[3] == 8
    assert struct.unpack_from(">I", data, 4)[0] == BLOCKS
    assert int.from_bytes(data[9:12], "big") == BS
    assert set(pages_of(data, 12)) == {0x01, 0x08, 0x0A, 0x1C}


async def test_caching_page_reports_write_cache_enabled(i1) -> None:
    res = await i1.cmd(sense6(0x08, dbd=True))
    assert pages_of(bytes(res.data), 4)[0x08][2] & 0x04


async def test_allocation_length_truncates(i1) -> None:
    res = await i1.cmd(sense6(0x3F, alloc=4))
    assert len(res.data) == 4


async def test_mode_sense10_with_llbaa_returns_long_descriptor(i1) -> None:
    res = await i1.cmd(sense10(0x0A, llbaa=True))
    data = bytes(res.data)
    assert struct.unpack_from(">H", data)[0] == len(data) - 2
    assert data[4] & 0x01 and struct.unpack_from(">H", data, 6)[0] == 16
    assert struct.unpack_from(">Q", data, 8)[0] == BLOCKS
    assert struct.unpack_from(">I", data, 20)[0] == BS


async def test_saved_values_are_not_supported(i1) -> None:
    assert_sense(await i1.cmd(sense6(0x3F, pc=3)), ILLEGAL_REQUEST, 0x39, 0x00)


async def test_unknown_page_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(sense6(0x19)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_unknown_subpage_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(sense6(0x0A, subpage=5)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_changeable_values_show_d_sense_swp_and_wce(i1) -> None:
    pages = pages_of(bytes((await i1.cmd(sense6(0x3F, pc=1, dbd=True))).data), 4)
    assert pages[0x0A][2] == 0x04 and pages[0x0A][4] == 0x08
    assert pages[0x08][2] == 0x04
    assert not any(pages[0x01][2:])


async def test_mode_select_d_sense_switches_to_descriptor_sense(i1) -> None:
    res = await i1.cmd(cdb16(0x88, 0xFFFFFFFFFFFFFFFF, 1))
    assert res.sense[0] == 0x70
    page = await control_page(i1)
    page[2] |= 0x04
    assert_good(await select6(i1, bytes(page)))
    assert (await control_page(i1))[2] & 0x04
    res = await i1.cmd(cdb16(0x88, 0xFFFFFFFFFFFFFFFF, 1))
    assert res.sense[0] == 0x72
    assert_sense(res, ILLEGAL_REQUEST, 0x21, 0x00)


async def test_mode_select_raises_mode_parameters_changed_for_other_nexuses(i1, i2) -> None:
    page = await control_page(i1)
    page[2] |= 0x04
    assert_good(await select6(i1, bytes(page)))
    assert_sense(await i2.cmd(bytes(6)), UNIT_ATTENTION, 0x2A, 0x01)
    assert_good(await i1.cmd(bytes(6)))


async def test_mode_select_of_unchanged_page_raises_no_unit_attention(i1, i2) -> None:
    assert_good(await select6(i1, bytes(await control_page(i1))))
    assert_good(await i2.cmd(bytes(6)))


async def test_mode_select_changing_a_fixed_field_is_invalid_field_in_parameter_list(i1) -> None:
    page = await control_page(i1)
    page[5] |= 0x40  # TAS is not changeable
    res = await select6(i1, bytes(page))
    assert_sense(res, ILLEGAL_REQUEST, 0x26, 0x00)
    assert struct.unpack_from(">H", res.sense, 16)[0] == 4 + 5  # points at the byte


async def test_mode_select_wrong_page_length_is_invalid_field(i1) -> None:
    page = bytearray(await control_page(i1))
    page[1] = 6
    assert_sense(await select6(i1, bytes(page[:8])), ILLEGAL_REQUEST, 0x26, 0x00)


async def test_mode_select_with_save_pages_is_invalid_field_in_cdb(i1) -> None:
    assert_sense(await select6(i1, bytes(await control_page(i1)), sp=True), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_mode_select_block_descriptor_with_other_block_size_is_rejected(i1) -> None:
    param = bytes((0, 0, 0, 8)) + struct.pack(">II", BLOCKS, 4096)
    res = await i1.cmd(bytes((0x15, 0x10, 0, 0, len(param), 0)), param)
    assert_sense(res, ILLEGAL_REQUEST, 0x26, 0x00)


async def test_software_write_protect_rejects_writes_and_sets_wp(i1) -> None:
    page = await control_page(i1)
    page[4] |= 0x08
    assert_good(await select6(i1, bytes(page)))
    assert bytes((await i1.cmd(sense6(0x3F))).data)[2] & 0x80
    assert_good(await i1.read10(0, 1))
    assert_sense(await i1.write10(0, bytes(BS)), DATA_PROTECT, 0x27, 0x00)
    page[4] &= ~0x08
    assert_good(await select6(i1, bytes(page)))
    assert_good(await i1.write10(0, bytes(BS)))


async def test_write_cache_disabled_makes_writes_write_through(i1, lu) -> None:
    res = await i1.cmd(sense6(0x08, dbd=True))
    page = bytearray(pages_of(bytes(res.data), 4)[0x08])
    page[2] &= ~0x04
    assert_good(await select6(i1, bytes(page)))
    before = lu.backstore.flushes
    assert_good(await i1.write10(0, bytes(BS)))
    assert lu.backstore.flushes == before + 1


async def test_cold_reset_restores_default_mode_pages(target, i1) -> None:
    page = await control_page(i1)
    page[2] |= 0x04
    assert_good(await select6(i1, bytes(page)))
    target.reset_target(None, cold=True)
    await i1.clear_ua()
    assert not (await control_page(i1))[2] & 0x04


async def test_mode_select_keeps_the_arrays_own_write_protection(i1, lu) -> None:
    """Any MODE SELECT recomputed write protection from the config and the SWP bit alone, so a
    host turning its write cache off (sdparm --set WCE=0) made an S-VOL writable (found in review).
    The array's hold (S-VOL, fenced P-VOL), the config's read_only and the host's SWP are kept apart."""
    lu.held = True  # what replication does to an S-VOL
    res = await i1.cmd(sense6(0x08, dbd=True))
    page = bytearray(pages_of(bytes(res.data), 4)[0x08])
    page[2] &= ~0x04
    assert_good(await select6(i1, bytes(page)))
    assert_sense(await i1.write10(0, bytes(BS)), DATA_PROTECT, 0x27, 0x00)
    control = await control_page(i1)
    control[4] |= 0x08  # the host's SWP on top
    assert_good(await select6(i1, bytes(control)))
    lu.held = False  # the array lets go: SWP still protects
    assert_sense(await i1.write10(0, bytes(BS)), DATA_PROTECT, 0x27, 0x00)
    control[4] &= ~0x08
    assert_good(await select6(i1, bytes(control)))
    assert_good(await i1.write10(0, bytes(BS)))

"""INQUIRY (standard and VPD pages), REPORT LUNS and absent LUNs (SPC-4 6.6, 6.33, 7.8)."""

from __future__ import annotations

import struct

import pytest

from storaged.scsi.target import ScsiTarget, decode_lun

from .conftest import I1, ILLEGAL_REQUEST, NAA, NAA2, TARGET, Initiator, assert_good, assert_sense, make_lu

pytestmark = pytest.mark.asyncio


def inquiry(evpd: bool = False, page: int = 0, alloc: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, 1 if evpd else 0, page, alloc, 0)


def report_luns(select: int = 0, alloc: int = 4096) -> bytes:
    return struct.pack(">BxBxxxIxx", 0xA0, select, alloc)


def designators(page: bytes) -> list[tuple[int, int, bytes]]:
    out, off = [], 4
    while off < len(page):
        length = page[off + 3]
        out.append((page[off] & 0x0F, page[off + 1], page[off + 4 : off + 4 + length]))
        off += 4 + length
    return out


async def test_standard_inquiry(i1) -> None:
    data = bytes((await i1.cmd(inquiry())).data)
    assert data[0] == 0x00 and data[2] == 0x06 and data[3] & 0x0F == 2
    assert data[4] == len(data) - 5
    assert data[8:16] == b"STORAGED"
    descriptors = struct.unpack_from(">8H", data, 58)
    assert {0x00A0, 0x0460, 0x04C0, 0x0960} <= set(descriptors)
    assert all(b == 0 or 0x20 <= b < 0x7F for b in data[8:36])


@pytest.mark.parametrize("alloc", [5, 36, 95])
async def test_standard_inquiry_truncates_to_allocation_length(i1, alloc) -> None:
    assert len((await i1.cmd(inquiry(alloc=alloc))).data) == alloc


async def test_page_code_without_evpd_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(inquiry(page=1)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_unsupported_vpd_page_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(inquiry(True, 0xC0)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_every_listed_vpd_page_is_served_in_ascending_order(i1) -> None:
    data = bytes((await i1.cmd(inquiry(True, 0x00))).data)
    pages = list(data[4 : 4 + struct.unpack_from(">H", data, 2)[0]])
    assert pages == sorted(pages) and {0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} <= set(pages)
    for page in pages:
        res = await i1.cmd(inquiry(True, page))
        assert_good(res)
        assert res.data[1] == page
        assert struct.unpack_from(">H", res.data, 2)[0] == len(res.data) - 4


async def test_unit_serial_number_page(i1) -> None:
    data = bytes((await i1.cmd(inquiry(True, 0x80))).data)
    assert data[4:] == b"SN0001"


async def test_device_identification_carries_naa_and_port_designators(i1) -> None:
    desig = designators(bytes((await i1.cmd(inquiry(True, 0x83))).data))
    naa = [d for d in desig if d[1] & 0x3F == 0x03]
    assert naa == [(1, 0x03, NAA)]
    by_type = {d[1] & 0x3F: d for d in desig if d[1] & 0x30 == 0x10}  # target port association
    assert struct.unpack(">HH", by_type[0x14][2]) == (0, 1)  # relative target port
    assert struct.unpack(">HH", by_type[0x15][2]) == (0, 1)  # target port group
    assert by_type[0x18][2].rstrip(b"\0") == f"{TARGET},t,0x0001".encode()
    device = [d for d in desig if d[1] & 0x30 == 0x20]
    assert device[0][2].rstrip(b"\0") == TARGET.encode()


async def test_block_limits_page(i1, lu) -> None:
    data = bytes((await i1.cmd(inquiry(True, 0xB0))).data)
    assert struct.unpack_from(">H", data, 2)[0] == 0x3C
    assert data[4] & 0x01 == 0  # WSNZ
    assert data[5] == lu.limits.max_compare_write_blocks
    assert struct.unpack_from(">I", data, 8)[0] == lu.max_xfer_blocks
    limits = lu.limits
    assert struct.unpack_from(">II", data, 20) == (limits.max_unmap_lba_count, limits.max_unmap_descriptors)
    assert struct.unpack_from(">Q", data, 36)[0] == lu.limits.max_write_same_blocks


async def test_block_device_characteristics_says_non_rotating(i1) -> None:
    data = bytes((await i1.cmd(inquiry(True, 0xB1))).data)
    assert struct.unpack_from(">H", data, 4)[0] == 1


async def test_logical_block_provisioning_page_for_thin_lu(i1) -> None:
    data = bytes((await i1.cmd(inquiry(True, 0xB2))).data)
    assert data[5] & 0xE4 == 0xE4  # LBPU, LBPWS, LBPWS10, LBPRZ
    assert data[5] & 0x02 == 0  # ANC_SUP
    assert data[6] & 0x07 == 2  # thin


async def test_logical_block_provisioning_page_for_thick_lu() -> None:
    ini = Initiator(ScsiTarget("t", {0: make_lu(thin=False)}), I1)
    data = bytes((await ini.cmd(inquiry(True, 0xB2))).data)
    assert data[5] == 0 and data[6] & 0x07 == 0
    await ini.clear_ua()
    rc16 = await ini.cmd(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    assert rc16.data[14] & 0xC0 == 0


async def test_report_luns_lists_mapped_luns_with_flat_addressing_above_255() -> None:
    target = ScsiTarget("t", {0: make_lu(), 300: make_lu(naa=NAA2)})
    ini = Initiator(target, I1)
    data = bytes((await ini.cmd(report_luns())).data)
    assert struct.unpack_from(">I", data)[0] == 16
    assert data[8:16] == bytes(8)
    assert data[16:24] == bytes((0x41, 0x2C)) + bytes(6)
    assert decode_lun(data[16:24]) == 300


@pytest.mark.parametrize("select,count", [(0, 1), (1, 0), (2, 1)])
async def test_report_luns_select_report(i1, select, count) -> None:
    data = bytes((await i1.cmd(report_luns(select))).data)
    assert struct.unpack_from(">I", data)[0] == 8 * count


async def test_report_luns_bad_select_report_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(report_luns(7)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_report_luns_to_an_absent_lun_works(i1) -> None:
    res = await i1.cmd(report_luns(), lun=5)
    assert_good(res)
    assert struct.unpack_from(">I", res.data)[0] == 8


async def test_inquiry_to_absent_lun_reports_qualifier_3_type_1f(i1) -> None:
    res = await i1.cmd(inquiry(), lun=5)
    assert_good(res)
    assert res.data[0] == 0x7F


async def test_other_commands_to_absent_lun_are_lun_not_supported(i1) -> None:
    assert_sense(await i1.cmd(bytes(6), lun=5), ILLEGAL_REQUEST, 0x25, 0x00)
    read10 = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
    assert_sense(await i1.cmd(read10, lun=5), ILLEGAL_REQUEST, 0x25, 0x00)


async def test_request_sense_to_absent_lun_returns_lun_not_supported_data(i1) -> None:
    res = await i1.cmd(bytes((0x03, 0, 0, 0, 18, 0)), lun=5)
    assert_good(res)
    assert (res.data[2], res.data[12]) == (ILLEGAL_REQUEST, 0x25)


async def test_report_target_port_groups(i1) -> None:
    res = await i1.cmd(struct.pack(">BBxxxxIxx", 0xA3, 0x0A, 255))
    data = bytes(res.data)
    assert struct.unpack_from(">I", data)[0] == len(data) - 4
    assert data[4] & 0x0F == 0 and data[5] & 0x01  # active/optimized, AO_SUP
    assert struct.unpack_from(">H", data, 6)[0] == 1
    assert data[11] == 1 and struct.unpack_from(">H", data, 14)[0] == 1


async def test_report_supported_task_management_functions(i1) -> None:
    res = await i1.cmd(struct.pack(">BBxxxxIxx", 0xA3, 0x0D, 4))
    assert res.data[0] & 0x08  # LU reset
    assert_sense(await i1.cmd(struct.pack(">BBxxxxIxx", 0xA3, 0x0D, 3)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_unknown_maintenance_in_service_action_points_at_byte_1(i1) -> None:
    res = await i1.cmd(struct.pack(">BBxxxxIxx", 0xA3, 0x1F, 255))
    assert_sense(res, ILLEGAL_REQUEST, 0x24, 0x00)
    assert struct.unpack_from(">H", res.sense, 16)[0] == 1

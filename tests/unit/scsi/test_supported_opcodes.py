"""REPORT SUPPORTED OPERATION CODES (SPC-4 6.35)."""

from __future__ import annotations

import struct

import pytest

from .conftest import I1, ILLEGAL_REQUEST, Initiator, assert_good, assert_sense, make_lu
from storaged.scsi.target import ScsiTarget

pytestmark = pytest.mark.asyncio


def rsoc(option: int = 0, op: int = 0, sa: int = 0, rctd: bool = False, alloc: int = 65535) -> bytes:
    return struct.pack(">BBBBHIxx", 0xA3, 0x0C, option | (0x80 if rctd else 0), op, sa, alloc)


def parse_all(data: bytes, rctd: bool) -> list[tuple[int, int, int, int]]:
    """(opcode, service action, flags, cdb length) per descriptor."""
    length = struct.unpack_from(">I", data)[0]
    out, off = [], 4
    while off < 4 + length:
        op, sa, flags, cdb_len = struct.unpack_from(">BxHxBH", data, off)
        out.append((op, sa, flags, cdb_len))
        off += 8 + (12 if flags & 0x02 else 0)
    return out


async def test_all_commands_lists_core_opcodes_with_cdb_lengths(i1) -> None:
    descs = parse_all(bytes((await i1.cmd(rsoc())).data), False)
    table = {(op, sa if flags & 1 else None): cdb_len for op, sa, flags, cdb_len in descs}
    assert table[(0x28, None)] == 10 and table[(0x88, None)] == 16 and table[(0x12, None)] == 6
    assert table[(0x9E, 0x10)] == 16 and table[(0x9E, 0x12)] == 16
    assert table[(0x5F, 0x01)] == 10 and table[(0x42, None)] == 10
    assert all(flags & 1 or sa == 0 for _, sa, flags, _ in descs)  # SERVACTV=0 => SA 0


async def test_rctd_adds_timeouts_descriptors(i1) -> None:
    data = bytes((await i1.cmd(rsoc(rctd=True))).data)
    descs = parse_all(data, True)
    assert descs and all(flags & 0x02 for _, _, flags, _ in descs)
    assert struct.unpack_from(">H", data, 12)[0] == 0x0A


async def test_one_command_returns_usage_data(i1) -> None:
    data = bytes((await i1.cmd(rsoc(1, 0x28))).data)
    assert data[1] & 0x07 == 0x03  # supported per standard
    assert struct.unpack_from(">H", data, 2)[0] == 10
    usage = data[4:14]
    assert usage[0] == 0x28 and usage[1] & 0x18 == 0x18  # DPO and FUA evaluated


async def test_one_command_with_rctd_adds_timeouts(i1) -> None:
    data = bytes((await i1.cmd(rsoc(1, 0x2A, rctd=True))).data)
    assert data[1] & 0x80
    assert len(data) == 4 + 10 + 12


async def test_one_command_for_service_action_opcode_is_invalid_field(i1) -> None:
    res = await i1.cmd(rsoc(1, 0x9E))
    assert_sense(res, ILLEGAL_REQUEST, 0x24, 0x00)
    assert struct.unpack_from(">H", res.sense, 16)[0] == 2


async def test_service_action_query_for_plain_opcode_is_invalid_field(i1) -> None:
    assert_sense(await i1.cmd(rsoc(2, 0x28)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_service_action_query(i1) -> None:
    data = bytes((await i1.cmd(rsoc(2, 0x9E, 0x12))).data)
    assert data[1] & 0x07 == 0x03 and data[4:6] == bytes((0x9E, 0x12))


async def test_unsupported_opcode_is_reported_not_supported(i1) -> None:
    data = bytes((await i1.cmd(rsoc(1, 0xC7))).data)
    assert data[1] & 0x07 == 0x01 and struct.unpack_from(">H", data, 2)[0] == 0


async def test_every_listed_command_answers_a_one_command_query(i1) -> None:
    for op, sa, flags, cdb_len in parse_all(bytes((await i1.cmd(rsoc())).data), False):
        res = await i1.cmd(rsoc(2 if flags & 1 else 1, op, sa))
        assert_good(res)
        assert struct.unpack_from(">H", res.data, 2)[0] == cdb_len
        assert res.data[4] == op


async def test_allocation_length_truncates(i1) -> None:
    assert len((await i1.cmd(rsoc(alloc=20))).data) == 20


async def test_thick_lu_does_not_list_unmap() -> None:
    ini = Initiator(ScsiTarget("t", {0: make_lu(thin=False)}), I1)
    await ini.clear_ua()
    ops = {op for op, _, _, _ in parse_all(bytes((await ini.cmd(rsoc())).data), False)}
    assert 0x42 not in ops and 0x28 in ops


async def test_every_listed_opcode_is_dispatched(i1) -> None:
    """What RSOC advertises must not answer INVALID COMMAND OPERATION CODE."""
    for op, sa, flags, cdb_len in parse_all(bytes((await i1.cmd(rsoc())).data), False):
        cdb = bytearray(cdb_len)
        cdb[0] = op
        if flags & 1:
            cdb[1] = sa
        res = await i1.cmd(bytes(cdb))
        if res.sense:
            assert res.sense[12] != 0x20, hex(op)

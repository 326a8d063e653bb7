"""Thin provisioning: UNMAP, WRITE SAME (with UNMAP / NDOB), GET LBA STATUS (SBC-3 4.7, 5.x)."""

from __future__ import annotations

import struct

import pytest

from storaged.scsi.target import ScsiTarget

from .conftest import (
    BLOCKS,
    BS,
    DATA_PROTECT,
    I1,
    ILLEGAL_REQUEST,
    NAA,
    Initiator,
    assert_good,
    assert_sense,
    make_lu,
)

pytestmark = pytest.mark.asyncio

CHUNK_BLOCKS = 4096 // BS  # MemoryBackstore allocation unit


def unmap_cdb(plen: int, anchor: bool = False) -> bytes:
    return struct.pack(">BBxxxxBHB", 0x42, 1 if anchor else 0, 0, plen, 0)


def unmap_list(*ranges: tuple[int, int]) -> bytes:
    descs = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(descs) + 6, len(descs)) + descs


async def lba_status(ini: Initiator, lba: int, alloc: int = 1024):
    res = await ini.cmd(struct.pack(">BBQIBB", 0x9E, 0x12, lba, alloc, 0, 0))
    return res


def descriptors(data: bytes) -> list[tuple[int, int, int]]:
    length = struct.unpack_from(">I", data)[0]
    return [struct.unpack_from(">QIB", data, off) for off in range(8, 4 + length, 16)]


async def test_unmap_deallocates_and_reads_zero(i1, lu) -> None:
    assert_good(await i1.write10(0, b"a" * 4 * CHUNK_BLOCKS * BS))
    data = unmap_list((CHUNK_BLOCKS, 2 * CHUNK_BLOCKS))
    assert_good(await i1.cmd(unmap_cdb(len(data)), data))
    got = bytes((await i1.read10(0, 4 * CHUNK_BLOCKS)).data)
    assert got == b"a" * CHUNK_BLOCKS * BS + bytes(2 * CHUNK_BLOCKS * BS) + b"a" * CHUNK_BLOCKS * BS
    descs = descriptors(bytes((await lba_status(i1, 0)).data))
    c = CHUNK_BLOCKS
    assert descs[:3] == [(0, c, 0), (c, 2 * c, 1), (3 * c, c, 0)]


async def test_unmap_partial_block_range_still_reads_zero(i1) -> None:
    assert_good(await i1.write10(0, b"a" * 2 * BS))
    data = unmap_list((1, 1))
    assert_good(await i1.cmd(unmap_cdb(len(data)), data))
    assert bytes((await i1.read10(0, 2)).data) == b"a" * BS + bytes(BS)


async def test_unmap_zero_parameter_length_is_a_no_op(i1) -> None:
    assert_good(await i1.cmd(unmap_cdb(0)))


async def test_unmap_with_zero_block_descriptors_is_good(i1) -> None:
    data = unmap_list((0, 0), (BLOCKS, 0))
    assert_good(await i1.cmd(unmap_cdb(len(data)), data))


async def test_unmap_parameter_list_shorter_than_header_is_length_error(i1) -> None:
    assert_sense(await i1.cmd(unmap_cdb(4), bytes(4)), ILLEGAL_REQUEST, 0x1A, 0x00)


async def test_unmap_beyond_end_is_lba_out_of_range_and_unmaps_nothing(i1) -> None:
    assert_good(await i1.write10(0, b"a" * BS))
    data = unmap_list((0, 1), (BLOCKS - 1, 2))
    assert_sense(await i1.cmd(unmap_cdb(len(data)), data), ILLEGAL_REQUEST, 0x21, 0x00)
    assert bytes((await i1.read10(0, 1)).data) == b"a" * BS


async def test_unmap_too_many_descriptors_is_invalid_field_in_parameter_list(i1, lu) -> None:
    data = unmap_list(*[(i, 1) for i in range(lu.limits.max_unmap_descriptors + 1)])
    assert_sense(await i1.cmd(unmap_cdb(len(data)), data), ILLEGAL_REQUEST, 0x26, 0x00)


async def test_unmap_range_above_maximum_lba_count_is_invalid_field_in_parameter_list() -> None:
    from storaged.scsi.lu import BlockLimits

    ini = Initiator(ScsiTarget("t", {0: make_lu(limits=BlockLimits(max_unmap_lba_count=8))}), I1)
    await ini.clear_ua()
    data = unmap_list((0, 9))
    assert_sense(await ini.cmd(unmap_cdb(len(data)), data), ILLEGAL_REQUEST, 0x26, 0x00)


async def test_unmap_anchor_is_invalid_field(i1) -> None:
    data = unmap_list((0, 1))
    assert_sense(await i1.cmd(unmap_cdb(len(data), anchor=True), data), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_unmap_on_read_only_lu_is_write_protected() -> None:
    ini = Initiator(ScsiTarget("t", {0: make_lu(read_only=True)}), I1)
    await ini.clear_ua()
    data = unmap_list((0, 1))
    assert_sense(await ini.cmd(unmap_cdb(len(data)), data), DATA_PROTECT, 0x27, 0x00)


async def test_unmap_is_not_offered_on_a_thick_lu() -> None:
    ini = Initiator(ScsiTarget("t", {0: make_lu(thin=False)}), I1)
    await ini.clear_ua()
    data = unmap_list((0, 1))
    assert_sense(await ini.cmd(unmap_cdb(len(data)), data), ILLEGAL_REQUEST, 0x20, 0x00)
    ws_unmap = struct.pack(">BBIBHB", 0x41, 0x08, 0, 0, 1, 0)
    assert_sense(await ini.cmd(ws_unmap, bytes(BS)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_get_lba_status_beyond_end_is_lba_out_of_range(i1) -> None:
    for lba in (BLOCKS, BLOCKS + 1, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF):
        assert_sense(await lba_status(i1, lba), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_get_lba_status_first_descriptor_starts_at_requested_lba(i1) -> None:
    assert_good(await i1.write10(0, b"x" * 2 * CHUNK_BLOCKS * BS))
    descs = descriptors(bytes((await lba_status(i1, 3)).data))
    assert descs[0] == (3, 2 * CHUNK_BLOCKS - 3, 0)
    assert descs[1][0] == 2 * CHUNK_BLOCKS and descs[1][2] == 1


async def test_get_lba_status_last_block(i1) -> None:
    descs = descriptors(bytes((await lba_status(i1, BLOCKS - 1)).data))
    assert descs == [(BLOCKS - 1, 1, 1)]


async def test_get_lba_status_allocation_length_limits_descriptors(i1) -> None:
    for i in range(0, 8 * CHUNK_BLOCKS, 2 * CHUNK_BLOCKS):
        assert_good(await i1.write10(i, b"x" * CHUNK_BLOCKS * BS))
    res = await lba_status(i1, 0, alloc=24)
    assert len(res.data) == 24
    assert struct.unpack_from(">I", res.data)[0] == 20


async def test_write_same_unmap_with_zero_block_makes_a_hole(i1) -> None:
    assert_good(await i1.write10(0, b"\xff" * 2 * CHUNK_BLOCKS * BS))
    cdb = struct.pack(">BBIBHB", 0x41, 0x08, 0, 0, 2 * CHUNK_BLOCKS, 0)
    assert_good(await i1.cmd(cdb, bytes(BS)))
    assert bytes((await i1.read10(0, 2 * CHUNK_BLOCKS)).data) == bytes(2 * CHUNK_BLOCKS * BS)
    assert descriptors(bytes((await lba_status(i1, 0)).data))[0][2] == 1


async def test_write_same_replicates_the_block(i1) -> None:
    block = bytes(range(256)) * (BS // 256)
    cdb = struct.pack(">BBQIBB", 0x93, 0, 10, 300, 0, 0)
    assert_good(await i1.cmd(cdb, block))
    assert bytes((await i1.read10(10, 300)).data) == block * 300
    assert bytes((await i1.read10(310, 1)).data) == bytes(BS)


async def test_write_same_unmap_deallocates_even_with_nonzero_data(i1) -> None:
    """LIO behaviour, which libiscsi's WriteSame10.UnmapUntilEnd relies on."""
    assert_good(await i1.write10(0, b"q" * 3 * BS))
    cdb = struct.pack(">BBQIBB", 0x93, 0x08, 0, 3, 0, 0)
    assert_good(await i1.cmd(cdb, b"r" * BS))
    assert bytes((await i1.read10(0, 3)).data) == bytes(3 * BS)


async def test_write_same_without_unmap_writes_zeros(i1) -> None:
    assert_good(await i1.write10(0, b"q" * 3 * BS))
    cdb = struct.pack(">BBQIBB", 0x93, 0x00, 0, 3, 0, 0)
    assert_good(await i1.cmd(cdb, bytes(BS)))
    assert bytes((await i1.read10(0, 3)).data) == bytes(3 * BS)


async def test_write_same16_ndob_writes_zeros_without_data(i1) -> None:
    assert_good(await i1.write10(0, b"q" * 4 * BS))
    cdb = struct.pack(">BBQIBB", 0x93, 0x09, 0, 4, 0, 0)
    assert_good(await i1.cmd(cdb))
    assert bytes((await i1.read10(0, 4)).data) == bytes(4 * BS)


@pytest.mark.parametrize("size", [BS // 2, 2 * BS, 0])
async def test_write_same_data_out_must_be_one_block(i1, size) -> None:
    cdb = struct.pack(">BBIBHB", 0x41, 0x08, 0, 0, 1, 0)
    assert_sense(await i1.cmd(cdb, bytes(size) if size else None), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_write_same_anchor_is_invalid_field(i1) -> None:
    for flags in (0x10, 0x18):
        cdb = struct.pack(">BBIBHB", 0x41, flags, 0, 0, 1, 0)
        assert_sense(await i1.cmd(cdb, bytes(BS)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_write_same_zero_blocks_goes_to_the_end(i1) -> None:
    assert_good(await i1.write10(BLOCKS - 3, b"q" * 3 * BS))
    cdb = struct.pack(">BBIBHB", 0x41, 0x08, BLOCKS - 3, 0, 0, 0)
    assert_good(await i1.cmd(cdb, bytes(BS)))
    assert bytes((await i1.read10(BLOCKS - 3, 3)).data) == bytes(3 * BS)


async def test_write_same_zero_blocks_longer_than_maximum_is_invalid_field() -> None:
    from storaged.scsi.lu import BlockLimits

    ini = Initiator(ScsiTarget("t", {0: make_lu(limits=BlockLimits(max_write_same_blocks=16))}), I1)
    await ini.clear_ua()
    cdb = struct.pack(">BBIBHB", 0x41, 0, BLOCKS - 17, 0, 0, 0)
    assert_sense(await ini.cmd(cdb, bytes(BS)), ILLEGAL_REQUEST, 0x24, 0x00)
    cdb = struct.pack(">BBIBHB", 0x41, 0, BLOCKS - 16, 0, 0, 0)
    assert_good(await ini.cmd(cdb, bytes(BS)))


@pytest.mark.parametrize("lba,n", [(BLOCKS + 1, 0), (BLOCKS - 1, 2), (0xFFFFFFFF, 1)])
async def test_write_same_beyond_end_is_lba_out_of_range(i1, lba, n) -> None:
    cdb = struct.pack(">BBIBHB", 0x41, 0, lba, 0, n, 0)
    assert_sense(await i1.cmd(cdb, bytes(BS)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_read_capacity16_reports_thin_provisioning(i1) -> None:
    res = await i1.cmd(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    last, bs = struct.unpack_from(">QI", res.data)
    assert (last, bs) == (BLOCKS - 1, BS)
    assert res.data[13] & 0x0F == 0  # LBPPBE: one logical block per physical block by default
    assert res.data[14] & 0xC0 == 0xC0  # LBPME, LBPRZ


async def test_read_capacity16_allocation_length_truncates(i1) -> None:
    for alloc in range(0, 16):
        res = await i1.cmd(struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc, 0, 0))
        assert_good(res)
        assert len(res.data) == alloc


async def test_read_capacity10(i1) -> None:
    res = await i1.cmd(bytes((0x25,)) + bytes(9))
    assert struct.unpack(">II", res.data) == (BLOCKS - 1, BS)


async def test_physical_block_size_sets_lbppbe() -> None:
    ini = Initiator(ScsiTarget("t", {0: make_lu(physical_block_size=4096)}), I1)
    await ini.clear_ua()
    res = await ini.cmd(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    assert res.data[13] & 0x0F == 3


async def test_get_lba_status_on_thick_lu_reports_everything_mapped() -> None:
    """A thick LU over a store with holes (an unwritten file) still reports mapped (LBPME=0)."""
    from storaged.backstore.memory import MemoryBackstore
    from storaged.scsi.lu import LogicalUnit

    lu = LogicalUnit(MemoryBackstore(BLOCKS * BS, thin=True), naa=NAA, serial="s", thin=False)
    ini = Initiator(ScsiTarget("t", {0: lu}), I1)
    await ini.clear_ua()
    descs = descriptors(bytes((await lba_status(ini, 0)).data))
    assert descs[0][0] == 0 and descs[0][2] == 0 and descs[0][1] > 0


async def test_unmap_stops_at_a_range_after_the_lu_became_write_protected(i1, lu) -> None:
    """UNMAP checked write protection once and then punched its ranges one after the other: a
    range after the LU became write-protected (made an S-VOL, whose array then waited for the writes
    already under way) was still punched, after the pair's copy. Each range is now checked."""
    import asyncio

    from .conftest import DATA_PROTECT

    assert_good(await i1.write10(0, b"D" * 64 * BS))
    gate = asyncio.Event()
    plain_unmap = lu.backstore.unmap

    async def slow_unmap(offset: int, length: int) -> None:
        await gate.wait()
        await plain_unmap(offset, length)

    lu.backstore.unmap = slow_unmap  # type: ignore[method-assign]
    data = unmap_list((0, CHUNK_BLOCKS), (32, CHUNK_BLOCKS))
    job = asyncio.ensure_future(i1.cmd(unmap_cdb(len(data)), data))
    await asyncio.sleep(0)  # the first range is being punched
    lu.held = True
    held = lu.ranges.locked(0, BLOCKS * BS)
    quiesce = asyncio.ensure_future(held.__aenter__())
    gate.set()
    await quiesce  # the range under way has landed
    await held.__aexit__(None, None, None)
    assert_sense(await job, DATA_PROTECT, 0x27, 0x00)
    assert await lu.backstore.read(32 * BS, CHUNK_BLOCKS * BS) == b"D" * CHUNK_BLOCKS * BS

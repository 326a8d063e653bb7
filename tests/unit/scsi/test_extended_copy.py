"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.27)."""

from __future__ import annotations

import struct

import pytest

from storaged.scsi.target import ScsiTarget

from .conftest import (
    BLOCKS,
    BS,
    COPY_ABORTED,
    I1,
    I2,
    ILLEGAL_REQUEST,
    NAA,
    NAA2,
    Initiator,
    assert_conflict,
    assert_good,
    assert_sense,
    make_lu,
)

pytestmark = pytest.mark.asyncio


def tgt_desc(naa: bytes, dtype: int = 0xE4, bs: int = BS) -> bytes:
    desc = bytearray(32)
    desc[0] = dtype
    desc[4:8] = bytes((0x01, 0x03, 0, len(naa)))
    desc[8 : 8 + len(naa)] = naa
    desc[29:32] = bs.to_bytes(3, "big")
    return bytes(desc)


def seg_desc(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int, dtype: int = 0x02) -> bytes:
    return struct.pack(">BBHHHxxHQQ", dtype, 0, 0x18, src, dst, blocks, src_lba, dst_lba)


def param_list(targets: list[bytes], segments: list[bytes], list_id: int = 1, list_usage: int = 0) -> bytes:
    t, s = b"".join(targets), b"".join(segments)
    return struct.pack(">BBH4xII", list_id, list_usage << 3, len(t), len(s), 0) + t + s


def xcopy_cdb(plen: int) -> bytes:
    return struct.pack(">BB8xIxx", 0x83, 0x00, plen)


def rcr_cdb(sa: int, list_id: int = 0, alloc: int = 1024) -> bytes:
    return struct.pack(">BBB7xIxx", 0x84, sa, list_id, alloc)


@pytest.fixture
def two_lu_target() -> ScsiTarget:
    return ScsiTarget("t", {0: make_lu(), 1: make_lu(naa=NAA2)})


async def test_copy_within_one_lu(i1) -> None:
    assert_good(await i1.write10(0, b"A" * 16 * BS))
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 16, 0, 1000)])
    assert_good(await i1.cmd(xcopy_cdb(len(data)), data))
    assert bytes((await i1.read10(1000, 16)).data) == b"A" * 16 * BS


async def test_copy_between_lus_of_the_target(two_lu_target) -> None:
    ini = Initiator(two_lu_target, I1)
    await ini.clear_ua()
    assert_good(await ini.write10(10, b"B" * 4 * BS))
    data = param_list([tgt_desc(NAA), tgt_desc(NAA2)], [seg_desc(0, 1, 4, 10, 20)])
    assert_good(await ini.cmd(xcopy_cdb(len(data)), data))
    ini1 = Initiator(two_lu_target, I1, lun=1)
    await ini1.clear_ua()
    assert bytes((await ini1.read10(20, 4)).data) == b"B" * 4 * BS


async def test_zero_parameter_list_length_is_a_no_op(i1) -> None:
    assert_good(await i1.cmd(xcopy_cdb(0)))


async def test_truncated_parameter_list_is_length_error(i1) -> None:
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 1, 0, 10)])
    assert_sense(await i1.cmd(xcopy_cdb(len(data) - 1), data[:-1]), ILLEGAL_REQUEST, 0x1A, 0x00)


async def test_unsupported_target_descriptor_type(i1) -> None:
    data = param_list([tgt_desc(NAA, dtype=0xE0)], [seg_desc(0, 0, 1, 0, 10)])
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), ILLEGAL_REQUEST, 0x26, 0x07)


async def test_unsupported_segment_descriptor_type(i1) -> None:
    seg = struct.pack(">BBH", 0x03, 0, 0x10) + bytes(16)
    data = param_list([tgt_desc(NAA)], [seg])
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), ILLEGAL_REQUEST, 0x26, 0x09)


async def test_too_many_target_descriptors(i1) -> None:
    from storaged.scsi.xcopy import MAX_TARGET_DESCRIPTORS

    data = param_list([tgt_desc(NAA)] * (MAX_TARGET_DESCRIPTORS + 1), [seg_desc(0, 0, 1, 0, 10)])
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), ILLEGAL_REQUEST, 0x26, 0x06)


async def test_too_many_segment_descriptors(i1) -> None:
    from storaged.scsi.xcopy import MAX_SEGMENT_DESCRIPTORS

    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 1, 0, 10)] * (MAX_SEGMENT_DESCRIPTORS + 1))
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), ILLEGAL_REQUEST, 0x26, 0x08)


async def test_descriptor_list_longer_than_maximum_is_length_error(i1) -> None:
    from storaged.scsi.xcopy import MAX_DESCRIPTOR_LIST_LENGTH

    count = MAX_DESCRIPTOR_LIST_LENGTH // 28 + 1
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 1, 0, 10)] * count)
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), ILLEGAL_REQUEST, 0x1A, 0x00)


async def test_bad_target_index_aborts_the_copy(i1) -> None:
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 1, 1, 0, 10)])
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), COPY_ABORTED, 0x0D, 0x02)


async def test_unknown_lu_aborts_the_copy(i1) -> None:
    data = param_list([tgt_desc(NAA2)], [seg_desc(0, 0, 1, 0, 10)])
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), COPY_ABORTED, 0x0D, 0x02)


async def test_segment_beyond_end_aborts_without_copying(i1) -> None:
    assert_good(await i1.write10(0, b"A" * BS))
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 1, 0, 5), seg_desc(0, 0, 4, 0, BLOCKS - 1)])
    assert_sense(await i1.cmd(xcopy_cdb(len(data)), data), COPY_ABORTED, 0x0D, 0x02)
    assert bytes((await i1.read10(5, 1)).data) == bytes(BS)


async def test_copy_into_lu_reserved_by_another_nexus_conflicts(two_lu_target) -> None:
    ini = Initiator(two_lu_target, I1)
    other = Initiator(two_lu_target, I2, lun=1)
    await ini.clear_ua()
    await other.clear_ua()
    assert_good(await other.cmd(bytes((0x16, 0, 0, 0, 0, 0))))  # RESERVE(6) on LUN 1
    data = param_list([tgt_desc(NAA), tgt_desc(NAA2)], [seg_desc(0, 1, 1, 0, 0)])
    assert_conflict(await ini.cmd(xcopy_cdb(len(data)), data))


async def test_copy_status_is_held_per_list_id(i1) -> None:
    assert_sense(await i1.cmd(rcr_cdb(0x00, list_id=7)), ILLEGAL_REQUEST, 0x24, 0x00)
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 8, 0, 100)], list_id=7)
    assert_good(await i1.cmd(xcopy_cdb(len(data)), data))
    res = await i1.cmd(rcr_cdb(0x00, list_id=7))
    assert_good(res)
    avail, status, segs, units, count = struct.unpack(">IBHBI", res.data)
    assert (avail, status & 0x7F, segs, units, count) == (8, 0, 1, 0, 8 * BS)


async def test_copy_status_is_not_held_when_list_usage_says_discard(i1) -> None:
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 1, 0, 100)], list_id=9, list_usage=2)
    assert_good(await i1.cmd(xcopy_cdb(len(data)), data))
    assert_sense(await i1.cmd(rcr_cdb(0x00, list_id=9)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_copy_status_is_private_to_the_nexus(i1, i2) -> None:
    data = param_list([tgt_desc(NAA)], [seg_desc(0, 0, 1, 0, 100)], list_id=3)
    assert_good(await i1.cmd(xcopy_cdb(len(data)), data))
    assert_sense(await i2.cmd(rcr_cdb(0x00, list_id=3)), ILLEGAL_REQUEST, 0x24, 0x00)


async def test_operating_parameters(i1) -> None:
    from storaged.scsi import xcopy

    data = bytes((await i1.cmd(rcr_cdb(0x03))).data)
    assert struct.unpack_from(">I", data)[0] == len(data) - 4 >= 40
    assert struct.unpack_from(">HHI", data, 8) == (
        xcopy.MAX_TARGET_DESCRIPTORS,
        xcopy.MAX_SEGMENT_DESCRIPTORS,
        xcopy.MAX_DESCRIPTOR_LIST_LENGTH,
    )
    assert set(data[44 : 44 + data[43]]) == {0x02, 0xE4}


async def test_write_atomic16_writes_and_respects_the_limit(i1, lu) -> None:
    cdb = struct.pack(">BBQHHBB", 0x9C, 0, 3, 0, 2, 0, 0)
    assert_good(await i1.cmd(cdb, b"Z" * 2 * BS))
    assert bytes((await i1.read10(3, 2)).data) == b"Z" * 2 * BS
    too_long = struct.pack(">BBQHHBB", 0x9C, 0, 0, 0, lu.max_atomic_blocks + 1, 0, 0)
    assert_sense(await i1.cmd(too_long), ILLEGAL_REQUEST, 0x24, 0x00)
    vpd = await i1.cmd(bytes((0x12, 1, 0xB0, 0, 64, 0)))
    assert struct.unpack_from(">I", vpd.data, 44)[0] == lu.max_atomic_blocks


async def test_a_destination_write_protected_during_the_copy_gets_no_more_data(two_lu_target) -> None:
    """The write-protect check ran once, before the copy: a destination that became write-protected
    meanwhile (a volume made an S-VOL, whose array then waited for the writes already under way)
    still got the chunks read after it, landing after the pair's initial copy. Each chunk is now
    checked as it is stored."""
    import asyncio

    from .conftest import DATA_PROTECT

    src, dst = two_lu_target.luns[0], two_lu_target.luns[1]
    gate = asyncio.Event()
    plain_read = src.backstore.read

    async def slow_read(offset: int, length: int) -> bytes:
        await gate.wait()
        return await plain_read(offset, length)

    src.backstore.read = slow_read  # type: ignore[method-assign]
    await src.backstore.write(0, b"C" * 4 * BS)
    ini = Initiator(two_lu_target, I1)
    await ini.clear_ua()
    data = param_list([tgt_desc(NAA), tgt_desc(NAA2)], [seg_desc(0, 1, 4, 0, 0)])
    copy = asyncio.ensure_future(ini.cmd(xcopy_cdb(len(data)), data))
    await asyncio.sleep(0)
    dst.held = True  # what paircreate does on the secondary, then it waits for writes in flight
    async with dst.ranges.locked(0, BLOCKS * BS):
        pass
    gate.set()
    assert_sense(await copy, DATA_PROTECT, 0x27, 0x00)
    assert await dst.backstore.read(0, 4 * BS) == bytes(4 * BS)

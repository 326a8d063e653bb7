"""COMPARE AND WRITE (SBC-3 5.2) and ORWRITE(16)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from .conftest import (
    BLOCKS,
    BS,
    DATA_PROTECT,
    ILLEGAL_REQUEST,
    MISCOMPARE,
    assert_good,
    assert_sense,
    make_lu,
)

pytestmark = pytest.mark.asyncio


def caw(lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBQxxxBBB", 0x89, b1, lba, n, 0, 0)


async def test_matching_compare_writes_the_new_data(i1) -> None:
    assert_good(await i1.write10(5, b"A" * 2 * BS))
    assert_good(await i1.cmd(caw(5, 2), b"A" * 2 * BS + b"B" * 2 * BS))
    assert bytes((await i1.read10(5, 2)).data) == b"B" * 2 * BS


async def test_miscompare_leaves_data_and_reports_offset(i1) -> None:
    assert_good(await i1.write10(5, b"A" * 2 * BS))
    verify = bytearray(b"A" * 2 * BS)
    verify[2 * BS - 27] = ord("C")
    res = await i1.cmd(caw(5, 2), bytes(verify) + b"B" * 2 * BS)
    assert_sense(res, MISCOMPARE, 0x1D, 0x00)
    assert struct.unpack_from(">I", res.sense, 3)[0] == 2 * BS - 27
    assert bytes((await i1.read10(5, 2)).data) == b"A" * 2 * BS


async def test_miscompare_offset_in_descriptor_sense(i1, lu) -> None:
    lu.modes.current[0x0A][2] |= 0x04
    lu.modes.sync_lu()
    res = await i1.cmd(caw(0, 1), b"X" * BS + b"Y" * BS)
    assert res.sense[0] == 0x72
    assert_sense(res, MISCOMPARE, 0x1D, 0x00)
    assert res.sense[8:12] == bytes((0x00, 0x0A, 0x80, 0x00))
    assert struct.unpack_from(">Q", res.sense, 12)[0] == 0


@pytest.mark.parametrize("blocks_sent", [1, 3])
async def test_data_out_must_be_exactly_twice_the_blocks(i1, blocks_sent) -> None:
    res = await i1.cmd(caw(0, 1 if blocks_sent == 1 else 2), bytes(4 * BS if blocks_sent == 1 else 3 * BS))
    assert_sense(res, ILLEGAL_REQUEST, 0x24, 0x00)


async def test_more_blocks_than_block_limits_allow_is_invalid_field() -> None:
    from storaged.scsi.lu import BlockLimits
    from storaged.scsi.target import ScsiTarget

    from .conftest import I1, Initiator

    ini = Initiator(ScsiTarget("t", {0: make_lu(limits=BlockLimits(max_compare_write_blocks=1))}), I1)
    await ini.clear_ua()
    assert_sense(await ini.cmd(caw(0, 2), bytes(4 * BS)), ILLEGAL_REQUEST, 0x24, 0x00)
    res = await ini.cmd(bytes((0x12, 1, 0xB0, 0, 64, 0)))
    assert res.data[5] == 1  # MAXIMUM COMPARE AND WRITE LENGTH


async def test_zero_blocks_is_a_no_op(i1) -> None:
    assert_good(await i1.cmd(caw(0, 0)))


async def test_beyond_end_is_lba_out_of_range(i1) -> None:
    assert_sense(await i1.cmd(caw(BLOCKS - 1, 2), bytes(4 * BS)), ILLEGAL_REQUEST, 0x21, 0x00)


async def test_read_only_is_write_protected(target) -> None:
    from storaged.scsi.target import ScsiTarget

    from .conftest import I1, Initiator

    ini = Initiator(ScsiTarget("t", {0: make_lu(read_only=True)}), I1)
    await ini.clear_ua()
    assert_sense(await ini.cmd(caw(0, 1), bytes(2 * BS)), DATA_PROTECT, 0x27, 0x00)


async def test_concurrent_compare_and_writes_are_atomic(i1, lu) -> None:
    """Of many initiators racing to flip a lock block from 0 to their id, exactly one wins."""

    class SlowReads:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def read(self, offset, length):
            await asyncio.sleep(0)
            return await self.inner.read(offset, length)

    lu.backstore = SlowReads(lu.backstore)
    results = await asyncio.gather(
        *(i1.cmd(caw(9, 1), bytes(BS) + bytes([i + 1]) * BS) for i in range(8))
    )
    winners = [r for r in results if r.status == 0]
    assert len(winners) == 1


async def test_write_waits_for_an_in_flight_compare_and_write(i1, lu) -> None:
    gate = asyncio.Event()

    class GatedReads:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def read(self, offset, length):
            await gate.wait()
            return await self.inner.read(offset, length)

        async def compare_and_write(self, *args, **kwargs):
            await gate.wait()
            return await self.inner.compare_and_write(*args, **kwargs)

    lu.backstore = GatedReads(lu.backstore)
    caw_task = asyncio.ensure_future(i1.cmd(caw(4, 1), bytes(BS) + b"C" * BS))
    await asyncio.sleep(0)
    write_task = asyncio.ensure_future(i1.write10(4, b"W" * BS))
    await asyncio.sleep(0)
    assert not write_task.done()
    gate.set()
    assert_good(await caw_task)
    assert_good(await write_task)
    assert bytes(await lu.backstore.inner.read(4 * BS, BS)) == b"W" * BS


async def test_orwrite_ors_data_into_the_medium(i1) -> None:
    assert_good(await i1.write10(0, b"\x0f" * BS))
    assert_good(await i1.cmd(struct.pack(">BBQIBB", 0x8B, 0, 0, 1, 0, 0), b"\xa0" * BS))
    assert bytes((await i1.read10(0, 1)).data) == b"\xaf" * BS

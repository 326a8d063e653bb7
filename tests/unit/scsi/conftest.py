"""Fixtures and helpers for driving ScsiTarget / LogicalUnit over a MemoryBackstore."""

from __future__ import annotations

import struct

import pytest

from storaged.backstore.memory import MemoryBackstore
from storaged.scsi.lu import BlockLimits, LogicalUnit
from storaged.scsi.sense import parse_sense
from storaged.scsi.target import ScsiTarget
from storaged.scsi.types import Nexus, ScsiCommand, ScsiResult, Status

TARGET = "iqn.2024-01.test.storaged:target"
NAA = bytes.fromhex("6005354f" + "11" * 12)
NAA2 = bytes.fromhex("6005354f" + "22" * 12)
BS = 512
BLOCKS = 8192

I1 = Nexus("iqn.2024-01.test:init1", bytes.fromhex("400001370000"), TARGET, 1)
I2 = Nexus("iqn.2024-01.test:init2", bytes.fromhex("400001370001"), TARGET, 1)
I3 = Nexus("iqn.2024-01.test:init3", bytes.fromhex("400001370002"), TARGET, 1)

# sense keys
NO_SENSE, NOT_READY, MEDIUM_ERROR, ILLEGAL_REQUEST, UNIT_ATTENTION = 0x0, 0x2, 0x3, 0x5, 0x6
DATA_PROTECT, COPY_ABORTED, MISCOMPARE = 0x7, 0xA, 0xE


def make_lu(
    blocks: int = BLOCKS, bs: int = BS, thin: bool = True, naa: bytes = NAA, **kw: object
) -> LogicalUnit:
    return LogicalUnit(MemoryBackstore(blocks * bs, thin=thin), naa=naa, serial="SN0001", block_size=bs, **kw)


def assert_good(res: ScsiResult) -> None:
    assert res.status == Status.GOOD, (res.status, res.sense and parse_sense(res.sense))


def assert_sense(res: ScsiResult, key: int, asc: int, ascq: int) -> None:
    assert res.status == Status.CHECK_CONDITION, res.status
    assert res.sense is not None
    assert parse_sense(res.sense) == (key, asc, ascq)


def assert_conflict(res: ScsiResult) -> None:
    assert res.status == Status.RESERVATION_CONFLICT, (res.status, res.sense and parse_sense(res.sense))


def cdb6(op: int, lba: int = 0, n: int = 0, b1: int = 0) -> bytes:
    return bytes((op, b1 | ((lba >> 16) & 0x1F), (lba >> 8) & 0xFF, lba & 0xFF, n, 0))


def cdb10(op: int, lba: int = 0, n: int = 0, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, b1, lba & 0xFFFFFFFF, 0, n, 0)


def cdb12(op: int, lba: int = 0, n: int = 0, b1: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, b1, lba, n, 0, 0)


def cdb16(op: int, lba: int = 0, n: int = 0, b1: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, b1, lba & 0xFFFFFFFFFFFFFFFF, n, 0, 0)


class Initiator:
    """One I_T nexus talking to a target."""

    def __init__(self, target: ScsiTarget, nexus: Nexus, lun: int = 0) -> None:
        self.target = target
        self.nexus = nexus
        self.lun = lun

    async def cmd(self, cdb: bytes, data: bytes | None = None, lun: int | None = None) -> ScsiResult:
        return await self.target.execute(ScsiCommand(cdb, self.lun if lun is None else lun, self.nexus, data))

    async def clear_ua(self) -> int:
        """TEST UNIT READY until it stops reporting unit attentions; returns how many there were."""
        for count in range(20):
            res = await self.cmd(bytes(6))
            sense = res.sense
            if res.status != Status.CHECK_CONDITION or sense is None or parse_sense(sense)[0] != UNIT_ATTENTION:
                return count
        raise AssertionError("unit attentions never cleared")

    async def read10(self, lba: int, n: int) -> ScsiResult:
        return await self.cmd(cdb10(0x28, lba, n))

    async def write10(self, lba: int, data: bytes, b1: int = 0) -> ScsiResult:
        return await self.cmd(cdb10(0x2A, lba, len(data) // BS, b1), data)

    async def prout(
        self, sa: int, rkey: int = 0, sarkey: int = 0, rtype: int = 0, flags: int = 0
    ) -> ScsiResult:
        cdb = struct.pack(">BBBxxIB", 0x5F, sa, rtype, 24, 0)
        return await self.cmd(cdb, struct.pack(">QQxxxxBxxx", rkey, sarkey, flags))

    async def prin(self, sa: int, alloc: int = 4096) -> ScsiResult:
        return await self.cmd(struct.pack(">BBxxxxxHB", 0x5E, sa, alloc, 0))

    async def read_keys(self) -> tuple[int, list[int]]:
        res = await self.prin(0)
        assert_good(res)
        gen, length = struct.unpack_from(">II", res.data)  # type: ignore[arg-type]
        data = bytes(res.data)  # type: ignore[arg-type]
        return gen, [struct.unpack_from(">Q", data, 8 + i)[0] for i in range(0, length, 8)]

    async def read_reservation(self) -> tuple[int, int] | None:
        """(key, type) of the reservation, or None."""
        res = await self.prin(1)
        assert_good(res)
        if struct.unpack_from(">I", res.data, 4)[0] == 0:  # type: ignore[arg-type]
            return None
        key = struct.unpack_from(">Q", res.data, 8)[0]  # type: ignore[arg-type]
        return key, res.data[21] & 0x0F  # type: ignore[index]


@pytest.fixture
def lu() -> LogicalUnit:
    return make_lu()


@pytest.fixture
def target(lu: LogicalUnit) -> ScsiTarget:
    return ScsiTarget(TARGET, {0: lu})


@pytest.fixture
async def i1(target: ScsiTarget) -> Initiator:
    ini = Initiator(target, I1)
    await ini.clear_ua()
    return ini


@pytest.fixture
async def i2(target: ScsiTarget) -> Initiator:
    ini = Initiator(target, I2)
    await ini.clear_ua()
    return ini


__all__ = ["BlockLimits"]

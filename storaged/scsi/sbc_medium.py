"""SBC medium housekeeping: capacity, cache sync, pre-fetch, defect data, start/stop, removal."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .sbc_common import GOOD, _oob, _u10, _u16
from .sense import cdb_error
from .types import ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from .lu import LogicalUnit


async def read_capacity10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if not cdb[8] & 0x01 and struct.unpack_from(">I", cdb, 2)[0]:
        raise cdb_error(2)  # LBA without PMI
    return ScsiResult(GOOD, struct.pack(">II", min(lu.num_blocks - 1, 0xFFFFFFFF), lu.block_size))


async def read_capacity16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    alloc = struct.unpack_from(">I", cmd.cdb, 10)[0]
    data = lu.cached("rc16", lambda: _rc16(lu))
    return ScsiResult(GOOD, data[:alloc])


def _rc16(lu: LogicalUnit) -> bytes:
    buf = bytearray(32)
    struct.pack_into(">QI", buf, 0, lu.num_blocks - 1, lu.block_size)
    buf[13] = lu.lbppbe & 0x0F
    if lu.thin:
        buf[14] = 0x80 | 0x40  # LBPME, LBPRZ
    return bytes(buf)


async def _sync_cache(lu: LogicalUnit, lba: int, n: int) -> ScsiResult:
    if lba > lu.num_blocks or lba + n > lu.num_blocks:
        raise _oob()
    await lu.backstore.flush()
    return ScsiResult(GOOD)


async def sync_cache10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u10(cmd.cdb)
    return await _sync_cache(lu, lba, n)


async def sync_cache16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u16(cmd.cdb)
    return await _sync_cache(lu, lba, n)


def _prefetch(lu: LogicalUnit, lba: int, n: int) -> ScsiResult:
    if lba > lu.num_blocks or lba + n > lu.num_blocks:
        raise _oob()
    # Nothing to stage: the page cache will serve it. CONDITION MET says "it would fit".
    return ScsiResult(Status.CONDITION_MET)


async def prefetch10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u10(cmd.cdb)
    return _prefetch(lu, lba, n)


async def prefetch16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u16(cmd.cdb)
    return _prefetch(lu, lba, n)


async def read_defect_data10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    alloc = (cdb[7] << 8) | cdb[8]
    return ScsiResult(GOOD, bytes((0, cdb[2] & 0x1F, 0, 0))[:alloc])


async def read_defect_data12(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    return ScsiResult(GOOD, bytes((0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0))[:alloc])


async def start_stop_unit(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """The medium cannot spin down or be ejected; accepted as a no-op like LIO does."""
    return ScsiResult(GOOD)


async def prevent_allow(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """Not removable (RMB=0), so SBC-3 lets PREVENT ALLOW MEDIUM REMOVAL succeed with no effect."""
    return ScsiResult(GOOD)

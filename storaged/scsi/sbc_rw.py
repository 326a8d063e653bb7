"""SBC reads and writes: READ/WRITE 6-16, WRITE ATOMIC, WRITE AND VERIFY, VERIFY, COMPARE AND WRITE, ORWRITE.

READ/WRITE 10 and 16 are the hot path: one ``struct.unpack_from``, a range check and the backstore
call and a small record of the range in flight (:mod:`storaged.scsi.ranges`). COMPARE AND WRITE,
WRITE ATOMIC and ORWRITE hold their range exclusively: they wait for overlapping writes already in
flight and hold off new ones, so they never act on a half-landed write.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..backstore.base import first_difference
from .sbc_common import GOOD, _oob, _u10, _u12, _u16
from .sense import Reason, ScsiError, cdb_error
from .types import ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from .lu import LogicalUnit


def _data(cmd: ScsiCommand, need: int, res: ScsiResult) -> memoryview | bytes | bytearray | None:
    """Data-Out trimmed to the whole blocks the CDB asked for.

    If the initiator sent less than the CDB described (its expected transfer length was short)
    only the complete blocks that arrived are written, and ``res.extra["spdtl"]`` (the SCSI data
    transfer length) lets the transport report the residual, as libiscsi's residual tests expect.
    """
    data = cmd.data_out
    have = 0 if data is None else len(data)
    if have == need:
        return data
    res.extra["spdtl"] = need
    if have > need:
        return memoryview(data)[:need]  # type: ignore[arg-type]
    return None


# --- READ ----------------------------------------------------------------------------------


async def _read(lu: LogicalUnit, flags: int, lba: int, n: int, len_field: int) -> ScsiResult:
    if flags & 0xE0:  # RDPROTECT without protection information
        raise cdb_error(1, 7)
    if lba + n > lu.num_blocks:
        raise _oob()
    if n == 0:
        return ScsiResult(GOOD)
    if n > lu.max_xfer_blocks:
        raise cdb_error(len_field)
    bs = lu.block_size
    return ScsiResult(GOOD, await lu.backstore.read(lba * bs, n * bs))


async def read6(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    return await _read(lu, 0, lba, cdb[4] or 256, 4)


async def read10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba, n = _u10(cdb)
    return await _read(lu, cdb[1], lba, n, 7)


async def read12(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba, n = _u12(cdb)
    return await _read(lu, cdb[1], lba, n, 6)


async def read16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba, n = _u16(cdb)
    return await _read(lu, cdb[1], lba, n, 10)


# --- WRITE ---------------------------------------------------------------------------------


def _write_args(
    lu: LogicalUnit, cmd: ScsiCommand, flags: int, lba: int, n: int, len_field: int, res: ScsiResult
) -> tuple[int, bytes | bytearray | memoryview] | None:
    """Validate a WRITE and return (byte offset, data) to store, or None when nothing is written."""
    if flags & 0xE0:  # WRPROTECT without protection information
        raise cdb_error(1, 7)
    if lu.write_protected:
        raise ScsiError(Reason.WRITE_PROTECTED)
    if lba + n > lu.num_blocks:
        raise _oob()
    if n == 0:
        return None
    if n > lu.max_xfer_blocks:
        raise cdb_error(len_field)
    bs = lu.block_size
    data = _data(cmd, n * bs, res)
    if data is None:
        data = cmd.data_out
        whole = (len(data) // bs) * bs if data is not None else 0
        if not whole:
            return None
        data = memoryview(data)[:whole]  # type: ignore[arg-type]
    return lba * bs, data


async def _write(
    lu: LogicalUnit, cmd: ScsiCommand, flags: int, lba: int, n: int, len_field: int
) -> ScsiResult:
    res = ScsiResult(GOOD)
    args = _write_args(lu, cmd, flags, lba, n, len_field, res)
    if args is not None:
        await lu.store(args[0], args[1], bool(flags & 0x08) or lu.write_through)
    return res


async def write6(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    return await _write(lu, cmd, 0, lba, cdb[4] or 256, 4)


async def write10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba, n = _u10(cdb)
    return await _write(lu, cmd, cdb[1], lba, n, 7)


async def write12(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba, n = _u12(cdb)
    return await _write(lu, cmd, cdb[1], lba, n, 6)


async def write16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba, n = _u16(cdb)
    return await _write(lu, cmd, cdb[1], lba, n, 10)


async def write_atomic16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """WRITE ATOMIC(16) (SBC-4): all or nothing with respect to other commands on the LU.

    Its range held exclusively, no overlapping write lands between its pieces or tears it
    (it waits for those in flight); a length limit keeps the write a single backstore call.
    """
    cdb = cmd.cdb
    lba = struct.unpack_from(">Q", cdb, 2)[0]
    if struct.unpack_from(">H", cdb, 10)[0]:  # ATOMIC BOUNDARY: not supported (max boundary size 0)
        raise cdb_error(10)
    n = struct.unpack_from(">H", cdb, 12)[0]
    if n > lu.max_atomic_blocks:
        raise cdb_error(12)
    res = ScsiResult(GOOD)
    args = _write_args(lu, cmd, cdb[1], lba, n, 12, res)
    if args is None:
        return res
    offset, data = args
    async with lu.ranges.locked(offset, offset + len(data)):
        lu.check_writable()
        await lu.backstore.write(offset, data, bool(cdb[1] & 0x08) or lu.write_through)
    return res


# --- WRITE AND VERIFY / VERIFY -------------------------------------------------------------


async def _write_verify(lu: LogicalUnit, cmd: ScsiCommand, lba: int, n: int, len_field: int) -> ScsiResult:
    """WRITE AND VERIFY: the verify is implied by writing through to stable storage."""
    flags = cmd.cdb[1]
    if flags & 0x04:  # BYTCHK 1xb is reserved for WRITE AND VERIFY
        raise cdb_error(1, 2)
    return await _write(lu, cmd, (flags & 0xE0) | 0x08, lba, n, len_field)


async def write_verify10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u10(cmd.cdb)
    return await _write_verify(lu, cmd, lba, n, 7)


async def write_verify12(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u12(cmd.cdb)
    return await _write_verify(lu, cmd, lba, n, 6)


async def write_verify16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u16(cmd.cdb)
    return await _write_verify(lu, cmd, lba, n, 10)


async def _verify(lu: LogicalUnit, cmd: ScsiCommand, lba: int, n: int, len_field: int) -> ScsiResult:
    flags = cmd.cdb[1]
    if flags & 0xE0:  # VRPROTECT
        raise cdb_error(1, 7)
    bytchk = (flags >> 1) & 0x03
    if bytchk == 2:
        raise cdb_error(1, 2)
    if lba + n > lu.num_blocks:
        raise _oob()
    if n == 0 or bytchk == 0:
        # BYTCHK=0 asks for a medium verification; a file has no ECC to check.
        return ScsiResult(GOOD)
    if n > lu.max_xfer_blocks:
        raise cdb_error(len_field)
    bs = lu.block_size
    need = n * bs if bytchk == 1 else bs
    data = cmd.data_out
    if data is None or len(data) < need:
        raise cdb_error(len_field)
    expected = memoryview(data)[:need] if bytchk == 1 else bytes(data[:bs]) * n
    medium = await lu.backstore.read(lba * bs, n * bs)
    diff = first_difference(medium, expected)
    if diff >= 0:
        raise ScsiError(Reason.MISCOMPARE_DURING_VERIFY, info=diff if bytchk == 1 else diff % bs)
    res = ScsiResult(GOOD)
    if len(data) != need:
        res.extra["spdtl"] = need
    return res


async def verify10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u10(cmd.cdb)
    return await _verify(lu, cmd, lba, n, 7)


async def verify12(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u12(cmd.cdb)
    return await _verify(lu, cmd, lba, n, 6)


async def verify16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u16(cmd.cdb)
    return await _verify(lu, cmd, lba, n, 10)


# --- COMPARE AND WRITE / ORWRITE -----------------------------------------------------------


async def compare_and_write(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """Atomic test-and-set (VMware ATS): compare n blocks, write n new ones only if all matched."""
    cdb = cmd.cdb
    if cdb[1] & 0xE0:
        raise cdb_error(1, 7)
    lba = struct.unpack_from(">Q", cdb, 2)[0]
    n = cdb[13]
    if lu.write_protected:
        raise ScsiError(Reason.WRITE_PROTECTED)
    if n > lu.limits.max_compare_write_blocks:
        raise cdb_error(13)
    if lba + n > lu.num_blocks:
        raise _oob()
    bs = lu.block_size
    data = cmd.data_out
    if (0 if data is None else len(data)) != 2 * n * bs:
        raise cdb_error(13)
    if n == 0:
        return ScsiResult(GOOD)
    view = memoryview(data)  # type: ignore[arg-type]
    diff = await lu.compare_and_write(lba * bs, view[: n * bs], view[n * bs :],
                                      bool(cdb[1] & 0x08) or lu.write_through)
    if diff >= 0:
        raise ScsiError(Reason.MISCOMPARE_DURING_VERIFY, info=diff)
    return ScsiResult(GOOD)


async def orwrite16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """ORWRITE(16): OR the Data-Out into the medium (SBC-3 5.9), its range held exclusively."""
    cdb = cmd.cdb
    if cdb[1] & 0xE0:
        raise cdb_error(1, 7)
    lba, n = _u16(cdb)
    if lu.write_protected:
        raise ScsiError(Reason.WRITE_PROTECTED)
    if lba + n > lu.num_blocks:
        raise _oob()
    if n == 0:
        return ScsiResult(GOOD)
    if n > lu.max_xfer_blocks:
        raise cdb_error(10)
    bs = lu.block_size
    need = n * bs
    data = cmd.data_out
    if data is None or len(data) < need:
        raise cdb_error(10)
    async with lu.ranges.locked(lba * bs, lba * bs + need):
        lu.check_writable()
        current = await lu.backstore.read(lba * bs, need)
        merged = int.from_bytes(current, "little") | int.from_bytes(data[:need], "little")
        await lu.backstore.write(
            lba * bs, merged.to_bytes(need, "little"), bool(cdb[1] & 0x08) or lu.write_through
        )
    return ScsiResult(GOOD)

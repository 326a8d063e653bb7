"""Block commands (SBC-3): reads, writes, verify, caches, provisioning, capacity.

READ/WRITE 10 and 16 are the hot path: one ``struct.unpack_from``, a range check and the backstore
call and a small record of the range in flight (:mod:`storaged.scsi.ranges`). COMPARE AND WRITE,
WRITE ATOMIC and ORWRITE hold their range exclusively: they wait for overlapping writes already in
flight and hold off new ones, so they never act on a half-landed write.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..backstore.base import Extent, first_difference
from .ops import Access, OpInfo, usage
from .sense import Reason, ScsiError, cdb_error, param_error
from .types import ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from .lu import LogicalUnit

GOOD = Status.GOOD
_u10 = struct.Struct(">xxIxH").unpack_from  # LBA, TRANSFER LENGTH
_u12 = struct.Struct(">xxII").unpack_from
_u16 = struct.Struct(">xxQI").unpack_from

LBA_OOB = Reason.LBA_OUT_OF_RANGE

#: WRITE SAME writes its replicated block in pieces of about this size
_WS_CHUNK = 1 << 20


def _oob() -> ScsiError:
    return ScsiError(LBA_OOB)


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
        current = await lu.backstore.read(lba * bs, need)
        merged = int.from_bytes(current, "little") | int.from_bytes(data[:need], "little")
        await lu.backstore.write(
            lba * bs, merged.to_bytes(need, "little"), bool(cdb[1] & 0x08) or lu.write_through
        )
    return ScsiResult(GOOD)


# --- WRITE SAME / UNMAP / GET LBA STATUS ---------------------------------------------------


async def _write_same(
    lu: LogicalUnit, cmd: ScsiCommand, lba: int, n: int, len_field: int, ndob: bool
) -> ScsiResult:
    flags = cmd.cdb[1]
    if flags & 0xE0:
        raise cdb_error(1, 7)
    if flags & 0x06:  # PBDATA / LBDATA (obsolete)
        raise cdb_error(1, 2)
    unmap = bool(flags & 0x08)
    if flags & 0x10:  # ANCHOR: needs UNMAP, and anchored state is not supported (ANC_SUP=0)
        raise cdb_error(1, 4)
    if unmap and not lu.thin:
        raise cdb_error(1, 3)
    if lu.write_protected:
        raise ScsiError(Reason.WRITE_PROTECTED)
    if lba > lu.num_blocks:
        raise _oob()
    if n == 0:
        n = lu.num_blocks - lba  # WSNZ=0: to the end of the medium
    if lba + n > lu.num_blocks:
        raise _oob()
    limit = lu.limits.max_write_same_blocks
    if limit and n > limit:
        raise cdb_error(len_field)
    bs = lu.block_size
    if ndob:
        block: bytes | None = None
    else:
        data = cmd.data_out
        if data is None or len(data) != bs:
            raise cdb_error(len_field)
        block = bytes(data)
    if n == 0:
        return ScsiResult(GOOD)
    offset, length = lba * bs, n * bs
    if unmap or block is None or not any(block):
        # Like LIO, UNMAP=1 deallocates whatever the block holds (libiscsi's WriteSame10.UnmapUntilEnd
        # sends a non-zero block and expects zeros back, which LBPRZ=1 then guarantees).
        await lu.zero(offset, length, unmap)
    else:
        per = max(1, min(n, _WS_CHUNK // bs))
        chunk = block * per
        pos, end = offset, offset + length
        # the whole range held while its pieces land: a CAW sees all of them or none
        async with lu.ranges.writing(offset, end):
            while pos < end:
                step = min(len(chunk), end - pos)
                await lu.backstore.write(pos, chunk if step == len(chunk) else chunk[:step], False)
                pos += step
    if lu.write_through:
        await lu.backstore.flush()
    return ScsiResult(GOOD)


async def write_same10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u10(cmd.cdb)
    return await _write_same(lu, cmd, lba, n, 7, False)


async def write_same16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    lba, n = _u16(cmd.cdb)
    return await _write_same(lu, cmd, lba, n, 10, bool(cmd.cdb[1] & 0x01))


async def unmap(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """UNMAP: validate the whole descriptor list first, then punch every range."""
    cdb = cmd.cdb
    if cdb[1] & 0x01:  # ANCHOR
        raise cdb_error(1, 0)
    if lu.write_protected:
        raise ScsiError(Reason.WRITE_PROTECTED)
    plen = (cdb[7] << 8) | cdb[8]
    if plen == 0:
        return ScsiResult(GOOD)
    data = cmd.data_out
    if plen < 8 or data is None or len(data) < plen:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    data = bytes(data[:plen])
    bd_len = min((data[2] << 8) | data[3], plen - 8)
    count = bd_len // 16
    lim = lu.limits
    if count > lim.max_unmap_descriptors:
        raise param_error(2)
    ranges: list[tuple[int, int]] = []
    for i in range(count):
        off = 8 + 16 * i
        lba, n = struct.unpack_from(">QI", data, off)
        if lba + n > lu.num_blocks:
            raise _oob()
        if n > lim.max_unmap_lba_count:
            raise param_error(off + 8)
        if n:
            ranges.append((lba, n))
    bs = lu.block_size
    for lba, n in ranges:
        await lu.zero(lba * bs, n * bs, True)
    return ScsiResult(GOOD)


#: how far one GET LBA STATUS looks ahead; the initiator asks again from where we stopped
_LBA_STATUS_WINDOW = 16 << 20


async def get_lba_status(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    lba = struct.unpack_from(">Q", cdb, 2)[0]
    alloc = struct.unpack_from(">I", cdb, 10)[0]
    if lba >= lu.num_blocks:
        raise _oob()
    bs = lu.block_size
    start = lba * bs
    window = min(lu.num_blocks * bs - start, max(_LBA_STATUS_WINDOW, bs))
    max_desc = max(1, (alloc - 8) // 16) if alloc > 8 else 1
    descs: list[list[int]] = []  # [first lba, end lba (exclusive), state]
    if lu.thin:
        extents = await lu.backstore.extents(start, window)
    else:  # LBPME=0: every LBA is mapped, whatever the file's holes say
        extents = [Extent(start, window, True)]
    for ext in extents:
        first = max(lba, ext.offset // bs)
        last = (ext.offset + ext.length + bs - 1) // bs
        state = 0 if ext.mapped else 1  # mapped / deallocated
        if descs and first < descs[-1][1]:
            # A block straddling an extent boundary holds some data: it counts as mapped.
            if state == 0:
                descs[-1][1] = first
                if descs[-1][1] <= descs[-1][0]:
                    descs.pop()
            else:
                first = descs[-1][1]
        if last <= first:
            continue
        if descs and descs[-1][2] == state and descs[-1][1] == first:
            descs[-1][1] = last
        else:
            if len(descs) == max_desc:
                break
            descs.append([first, last, state])
    body = bytearray()
    for first, last, state in descs:
        body += struct.pack(">QIB3x", first, min(last - first, 0xFFFFFFFF), state)
    data = struct.pack(">I4x", len(body) + 4) + body
    return ScsiResult(GOOD, data[:alloc])


# --- capacity, caches, defects, power ------------------------------------------------------


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


A = Access.ALLOW
R = Access.READ
W = Access.WRITE

OPS: tuple[OpInfo, ...] = (
    OpInfo(0x08, "READ(6)", read6, usage("08 1f ff ff ff 00"), R),
    OpInfo(0x0A, "WRITE(6)", write6, usage("0a 1f ff ff ff 00"), W),
    OpInfo(0x1B, "START STOP UNIT", start_stop_unit, usage("1b 01 00 0f f7 00"), A),
    OpInfo(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", prevent_allow, usage("1e 00 00 00 03 00"), A),
    OpInfo(0x25, "READ CAPACITY(10)", read_capacity10, usage("25 00 ff ff ff ff 00 00 01 00"), A),
    OpInfo(0x28, "READ(10)", read10, usage("28 18 ff ff ff ff 00 ff ff 00"), R),
    OpInfo(0x2A, "WRITE(10)", write10, usage("2a 18 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x2E, "WRITE AND VERIFY(10)", write_verify10, usage("2e 12 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x2F, "VERIFY(10)", verify10, usage("2f 16 ff ff ff ff 00 ff ff 00"), R),
    OpInfo(0x34, "PRE-FETCH(10)", prefetch10, usage("34 02 ff ff ff ff 00 ff ff 00"), R),
    OpInfo(0x35, "SYNCHRONIZE CACHE(10)", sync_cache10, usage("35 02 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x37, "READ DEFECT DATA(10)", read_defect_data10, usage("37 00 1f 00 00 00 00 ff ff 00"), R),
    OpInfo(0x41, "WRITE SAME(10)", write_same10, usage("41 08 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x42, "UNMAP", unmap, usage("42 00 00 00 00 00 00 ff ff 00"), W, thin_only=True),
    OpInfo(0x88, "READ(16)", read16, usage("88 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0x89, "COMPARE AND WRITE", compare_and_write,
           usage("89 18 ff ff ff ff ff ff ff ff 00 00 00 ff 00 00"), W),
    OpInfo(0x8A, "WRITE(16)", write16, usage("8a 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x8B, "ORWRITE(16)", orwrite16, usage("8b 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x8E, "WRITE AND VERIFY(16)", write_verify16,
           usage("8e 12 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x8F, "VERIFY(16)", verify16, usage("8f 16 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0x90, "PRE-FETCH(16)", prefetch16, usage("90 02 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0x91, "SYNCHRONIZE CACHE(16)", sync_cache16,
           usage("91 02 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x93, "WRITE SAME(16)", write_same16, usage("93 09 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x9C, "WRITE ATOMIC(16)", write_atomic16,
           usage("9c 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x9E, "READ CAPACITY(16)", read_capacity16,
           usage("9e 10 00 00 00 00 00 00 00 00 ff ff ff ff 00 00"), A, sa=0x10),
    OpInfo(0x9E, "GET LBA STATUS", get_lba_status,
           usage("9e 12 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R, sa=0x12),
    OpInfo(0xA8, "READ(12)", read12, usage("a8 18 ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0xAA, "WRITE(12)", write12, usage("aa 18 ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0xAE, "WRITE AND VERIFY(12)", write_verify12, usage("ae 12 ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0xAF, "VERIFY(12)", verify12, usage("af 16 ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0xB7, "READ DEFECT DATA(12)", read_defect_data12, usage("b7 1f 00 00 00 00 ff ff ff ff 00 00"), R),
)

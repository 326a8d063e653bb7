"""SBC provisioning: WRITE SAME, UNMAP and GET LBA STATUS (thin LUNs punch and report holes)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..backstore.base import Extent
from .sbc_common import GOOD, _oob, _u10, _u16
from .sense import Reason, ScsiError, cdb_error, param_error
from .types import ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from .lu import LogicalUnit

#: WRITE SAME writes its replicated block in pieces of about this size
_WS_CHUNK = 1 << 20


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
            lu.check_writable()
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
        lu.check_writable()  # again for each range: its hold starts here, after the last await
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

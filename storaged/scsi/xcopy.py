"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.27): the LU as copy manager.

Only what VMware VAAI and Windows ODX-less offload use: identification descriptor (E4h) target
descriptors naming LUs of the same ScsiTarget by their NAA designator, and block-to-block (02h)
segment descriptors. The copy runs to completion inside the command; results for list
identifiers whose usage says "hold" are kept per I_T nexus for RECEIVE COPY RESULTS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ops import Access, OpInfo, usage
from .sense import Reason, ReservationConflict, ScsiError, cdb_error, param_error
from .types import ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from .lu import LogicalUnit

MAX_TARGET_DESCRIPTORS = 8
MAX_SEGMENT_DESCRIPTORS = 64
MAX_DESCRIPTOR_LIST_LENGTH = 2048
#: the NUMBER OF BLOCKS field of a block-to-block segment is 16 bits
MAX_SEGMENT_BLOCKS = 0xFFFF
#: results kept per nexus before the oldest is dropped
MAX_HELD_RESULTS = 64
#: the copy moves this much per backstore read/write
COPY_CHUNK = 1 << 20

TGT_IDENTIFICATION = 0xE4
SEG_BLOCK_TO_BLOCK = 0x02
IMPLEMENTED_DESCRIPTORS = bytes((SEG_BLOCK_TO_BLOCK, TGT_IDENTIFICATION))

HDR = 16


@dataclass(slots=True)
class _Segment:
    src: LogicalUnit
    dst: LogicalUnit
    blocks: int
    src_lba: int
    dst_lba: int


def _copy_aborted() -> ScsiError:
    return ScsiError(Reason.COPY_TARGET_NOT_REACHABLE)


def _resolve_target(lu: LogicalUnit, desc: bytes, off: int) -> LogicalUnit | None:
    """The LU an identification target descriptor names, or None if we do not have it."""
    if desc[1] & 0x1F != 0:  # peripheral device type: only block devices
        raise param_error(off + 1)
    code_set, assoc_type, length = desc[4] & 0x0F, desc[5], desc[7]
    if length > 20:
        raise param_error(off + 7)
    if code_set != 0x1 or assoc_type & 0x3F != 0x03:  # binary NAA of a logical unit
        return None
    naa = bytes(desc[8 : 8 + length])
    if lu.target is not None:
        found = lu.target.find_lu(naa)
    else:
        found = lu if naa == lu.naa else None
    if found is not None:
        block_len = int.from_bytes(desc[29:32], "big")
        if block_len != found.block_size:
            raise param_error(off + 29)
    return found


def _parse(lu: LogicalUnit, data: bytes, plen: int) -> tuple[int, int, list[_Segment]]:
    list_id, flags = data[0], data[1]
    usage_bits = (flags >> 3) & 0x03
    tgt_len = struct.unpack_from(">H", data, 2)[0]
    seg_len, inline_len = struct.unpack_from(">II", data, 8)
    if HDR + tgt_len + seg_len + inline_len > plen:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    if tgt_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    if inline_len:
        raise param_error(12)
    if usage_bits == 0x03 and list_id != 0:
        raise param_error(0)

    # Target descriptors: count first (libiscsi's limits test), then types.
    if tgt_len % 32:
        raise param_error(2)
    if tgt_len // 32 > MAX_TARGET_DESCRIPTORS:
        raise ScsiError(Reason.TOO_MANY_TARGET_DESCRIPTORS)
    targets: list[LogicalUnit | None] = []
    for off in range(HDR, HDR + tgt_len, 32):
        if data[off] != TGT_IDENTIFICATION:
            raise ScsiError(Reason.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE, field=off, in_cdb=False)
        targets.append(_resolve_target(lu, data[off : off + 32], off))

    # Segment descriptors: walk the headers to count, then parse.
    seg_offsets: list[int] = []
    off, end = HDR + tgt_len, HDR + tgt_len + seg_len
    while off < end:
        if off + 4 > end:
            raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
        seg_offsets.append(off)
        off += 4 + struct.unpack_from(">H", data, off + 2)[0]
    if off != end:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    if len(seg_offsets) > MAX_SEGMENT_DESCRIPTORS:
        raise ScsiError(Reason.TOO_MANY_SEGMENT_DESCRIPTORS)
    segments: list[_Segment] = []
    for off in seg_offsets:
        if data[off] != SEG_BLOCK_TO_BLOCK:
            raise ScsiError(Reason.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE, field=off, in_cdb=False)
        if struct.unpack_from(">H", data, off + 2)[0] != 0x18:
            raise param_error(off + 2)
        src_i, dst_i, blocks, src_lba, dst_lba = struct.unpack_from(">HHxxHQQ", data, off + 4)
        if src_i >= len(targets) or dst_i >= len(targets):
            raise _copy_aborted()
        src, dst = targets[src_i], targets[dst_i]
        if src is None or dst is None:
            raise _copy_aborted()
        if src.block_size != dst.block_size:
            raise _copy_aborted()
        if src_lba + blocks > src.num_blocks or dst_lba + blocks > dst.num_blocks:
            raise _copy_aborted()
        segments.append(_Segment(src, dst, blocks, src_lba, dst_lba))
    return list_id, usage_bits, segments


async def extended_copy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    plen = struct.unpack_from(">I", cdb, 10)[0]
    if plen == 0:
        return ScsiResult(Status.GOOD)
    data = cmd.data_out
    if plen < HDR or data is None or len(data) < plen:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    raw = bytes(data[:plen])
    list_id, usage_bits, segments = _parse(lu, raw, plen)
    nexus = cmd.nexus
    for seg in segments:
        if seg.dst.write_protected:
            raise ScsiError(Reason.WRITE_PROTECTED)
        if seg.src is not lu and seg.src.access_conflict(nexus, Access.READ):
            raise ReservationConflict
        if seg.dst is not lu and seg.dst.access_conflict(nexus, Access.WRITE):
            raise ReservationConflict
    done_segments = 0
    moved = 0
    try:
        for seg in segments:
            bs = seg.src.block_size
            pos, end = seg.src_lba * bs, (seg.src_lba + seg.blocks) * bs
            dst_pos = seg.dst_lba * bs
            while pos < end:
                step = min(COPY_CHUNK, end - pos)
                chunk = await seg.src.backstore.read(pos, step)
                seg.dst.check_writable()  # again, after the read's await: store() holds the range from here
                await seg.dst.store(dst_pos, chunk, seg.dst.write_through)
                pos += step
                dst_pos += step
                moved += step
            done_segments += 1
    finally:
        if usage_bits in (0x00, 0x01):
            failed = done_segments < len(segments)
            _hold(lu, cmd, list_id, _copy_status(failed, done_segments, moved))
    return ScsiResult(Status.GOOD)


def _copy_status(failed: bool, segments: int, moved: int) -> bytes:
    units, count = (0x00, moved) if moved <= 0xFFFFFFFF else (0x01, moved >> 10)
    return struct.pack(">IBHBI", 8, 0x01 if failed else 0x00, segments, units, count)


def _hold(lu: LogicalUnit, cmd: ScsiCommand, list_id: int, status: bytes) -> None:
    results = lu.copy_results
    key = (cmd.nexus, list_id)
    results.pop(key, None)
    results[key] = status
    mine = [k for k in results if k[0] == cmd.nexus]
    for stale in mine[:-MAX_HELD_RESULTS]:
        del results[stale]


async def receive_copy_results(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    sa = cdb[1] & 0x1F
    alloc = struct.unpack_from(">I", cdb, 10)[0]
    if sa == 0x00:  # COPY STATUS
        status = lu.copy_results.get((cmd.nexus, cdb[2]))
        if status is None:
            raise cdb_error(2)
        return ScsiResult(Status.GOOD, status[:alloc])
    # OPERATING PARAMETERS
    body = struct.pack(
        ">B3xHHIIIII2xHBBBB3xB",
        0x01,  # SNLID: list identifier usage 11b supported
        MAX_TARGET_DESCRIPTORS,
        MAX_SEGMENT_DESCRIPTORS,
        MAX_DESCRIPTOR_LIST_LENGTH,
        MAX_SEGMENT_BLOCKS * lu.block_size,  # MAXIMUM SEGMENT LENGTH (bytes)
        0,  # MAXIMUM INLINE DATA LENGTH
        0,  # HELD DATA LIMIT
        0,  # MAXIMUM STREAM DEVICE TRANSFER SIZE
        1,  # TOTAL CONCURRENT COPIES
        1,  # MAXIMUM CONCURRENT COPIES
        (COPY_CHUNK.bit_length() - 1),  # DATA SEGMENT GRANULARITY (log2 bytes)
        0,
        0,
        len(IMPLEMENTED_DESCRIPTORS),
    ) + IMPLEMENTED_DESCRIPTORS
    data = struct.pack(">I", len(body)) + body
    return ScsiResult(Status.GOOD, data[:alloc])


OPS: tuple[OpInfo, ...] = (
    OpInfo(0x83, "EXTENDED COPY(LID1)", extended_copy,
           usage("83 00 00 00 00 00 00 00 00 00 ff ff ff ff 00 00"), Access.WRITE, sa=0x00, timeout=600),
    OpInfo(0x84, "RECEIVE COPY RESULTS COPY STATUS", receive_copy_results,
           usage("84 00 ff 00 00 00 00 00 00 00 ff ff ff ff 00 00"), Access.WRITE, sa=0x00),
    OpInfo(0x84, "RECEIVE COPY RESULTS OPERATING PARAMETERS", receive_copy_results,
           usage("84 03 00 00 00 00 00 00 00 00 ff ff ff ff 00 00"), Access.WRITE, sa=0x03),
)

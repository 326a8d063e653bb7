"""Primary commands (SPC-4) every logical unit answers: INQUIRY, REQUEST SENSE, MODE SENSE/SELECT,
REPORT SUPPORTED OPERATION CODES and friends, and SPC-2 RESERVE/RELEASE.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import vpd
from .ops import Access, OpInfo, iter_table, usage
from .sense import Reason, ReservationConflict, ScsiError, build_sense, cdb_error, param_error
from .types import ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from .lu import LogicalUnit

GOOD = Status.GOOD

#: REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS byte 0: ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
#: LOGICAL UNIT RESET, TARGET RESET; byte 1: none of the QUERY functions.
TMF_SUPPORT = bytes((0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0x00))


def _data_out(cmd: ScsiCommand, length: int) -> bytes:
    """The first ``length`` bytes of the parameter list; short lists are a length error."""
    data = cmd.data_out
    if data is None or len(data) < length:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    return bytes(data[:length])


# --- INQUIRY / REQUEST SENSE / TEST UNIT READY ---------------------------------------------


async def inquiry(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0x02:  # CMDDT (obsolete)
        raise cdb_error(1, 1)
    alloc = (cdb[3] << 8) | cdb[4]
    page = cdb[2]
    if not cdb[1] & 0x01:
        if page:
            raise cdb_error(2)
        data = lu.cached("std", lambda: vpd.standard_inquiry(lu))
    elif page == 0x83:
        nexus = cmd.nexus
        data = lu.cached(("vpd83", nexus.target, nexus.tpgt), lambda: vpd.page_device_id(lu, nexus))
    else:
        builder = _VPD.get(page)
        if builder is None or page not in vpd.supported_pages(lu):
            raise cdb_error(2)
        data = lu.cached(("vpd", page), lambda: builder(lu))
    return ScsiResult(GOOD, data[:alloc])


_VPD = {
    0x00: vpd.page_supported,
    0x80: vpd.page_serial,
    0x86: vpd.page_extended_inquiry,
    0xB0: vpd.page_block_limits,
    0xB1: vpd.page_block_characteristics,
    0xB2: vpd.page_provisioning,
}


async def request_sense(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """Report (and clear) the oldest pending unit attention, else NO SENSE (SPC-4 6.39)."""
    cdb = cmd.cdb
    reason = lu.pop_ua(cmd.nexus) or Reason.NO_SENSE
    return ScsiResult(GOOD, build_sense(reason, bool(cdb[1] & 0x01))[: cdb[4]])


async def test_unit_ready(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """GOOD unless the backstore says it cannot be reached (a remote store whose link is down)."""
    if not lu.backstore.available:
        raise ScsiError(Reason.NOT_READY_COMM_FAILURE)
    return ScsiResult(GOOD)


# --- MODE SENSE / MODE SELECT --------------------------------------------------------------


def _block_descriptor(lu: LogicalUnit, long: bool) -> bytes:
    if long:
        return struct.pack(">QII", lu.num_blocks, 0, lu.block_size)
    return struct.pack(">II", min(lu.num_blocks, 0xFFFFFFFF), lu.block_size & 0xFFFFFF)


async def mode_sense6(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    pages = lu.modes.pages(cdb[2] & 0x3F, cdb[3], cdb[2] >> 6)
    bd = b"" if cdb[1] & 0x08 else _block_descriptor(lu, False)
    total = 4 + len(bd) + len(pages)
    header = bytes((min(total - 1, 255), 0, lu.modes.device_specific(), len(bd)))
    return ScsiResult(GOOD, (header + bd + pages)[: cdb[4]])


async def mode_sense10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    pages = lu.modes.pages(cdb[2] & 0x3F, cdb[3], cdb[2] >> 6)
    llbaa = bool(cdb[1] & 0x10)
    bd = b"" if cdb[1] & 0x08 else _block_descriptor(lu, llbaa)
    total = 8 + len(bd) + len(pages)
    longlba = 1 if bd and llbaa else 0
    header = struct.pack(">HBBBBH", total - 2, 0, lu.modes.device_specific(), longlba, 0, len(bd))
    alloc = (cdb[7] << 8) | cdb[8]
    return ScsiResult(GOOD, (header + bd + pages)[:alloc])


async def _mode_select(lu: LogicalUnit, cmd: ScsiCommand, plen: int, hdr_len: int) -> ScsiResult:
    if cmd.cdb[1] & 0x01:  # SP: nothing is savable
        raise cdb_error(1, 0)
    if plen == 0:
        return ScsiResult(GOOD)
    if plen < hdr_len:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    data = _data_out(cmd, plen)
    if hdr_len == 4:
        bd_len = data[3]
        long = False
    else:
        bd_len = (data[6] << 8) | data[7]
        long = bool(data[4] & 0x01)
    if hdr_len + bd_len > plen:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    if bd_len:
        size = 16 if long else 8
        if bd_len % size:
            raise param_error(hdr_len - 1)
        for off in range(hdr_len, hdr_len + bd_len, size):
            if long:
                blen = struct.unpack_from(">I", data, off + 12)[0]
            else:
                blen = int.from_bytes(data[off + 5 : off + 8], "big")
            if blen != lu.block_size:
                raise param_error(off + (12 if long else 5))
    if lu.modes.select(data, hdr_len + bd_len):
        lu.add_ua(Reason.MODE_PARAMETERS_CHANGED, exclude=cmd.nexus)
    return ScsiResult(GOOD)


async def mode_select6(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return await _mode_select(lu, cmd, cmd.cdb[4], 4)


async def mode_select10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    return await _mode_select(lu, cmd, (cdb[7] << 8) | cdb[8], 8)


# --- REPORT SUPPORTED OPERATION CODES / TMF / TARGET PORT GROUPS ---------------------------


def _timeouts(info: OpInfo) -> bytes:
    return struct.pack(">HBBII", 0x0A, 0, 0, 0, info.timeout)


async def report_supported_opcodes(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    rctd = bool(cdb[2] & 0x80)
    option = cdb[2] & 0x07
    req_op = cdb[3]
    req_sa = (cdb[4] << 8) | cdb[5]
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    if option == 0:
        body = bytearray()
        for op in iter_table(lu.ops):
            flags = (0x02 if rctd else 0) | (0x01 if op.sa is not None else 0)
            body += struct.pack(">BBHBBH", op.opcode, 0, op.sa or 0, 0, flags, len(op.usage))
            if rctd:
                body += _timeouts(op)
        return ScsiResult(GOOD, (struct.pack(">I", len(body)) + body)[:alloc])
    entry = lu.ops[req_op]
    info: OpInfo | None
    if option == 1:
        if isinstance(entry, dict):
            raise cdb_error(2, 2)
        info = entry
    elif option == 2:
        if entry is not None and not isinstance(entry, dict):
            raise cdb_error(2, 2)
        info = entry.get(req_sa) if entry is not None else None
    elif option == 3:
        info = entry.get(req_sa) if isinstance(entry, dict) else entry
    else:
        raise cdb_error(2, 2)
    if info is None:
        data = bytes((0, 0x01, 0, 0))  # SUPPORT = 001b: not supported
    else:
        data = bytes((0, (0x80 if rctd else 0) | 0x03)) + struct.pack(">H", len(info.usage)) + info.usage
        if rctd:
            data += _timeouts(info)
    return ScsiResult(GOOD, data[:alloc])


async def report_supported_tmfs(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    if alloc < 4:
        raise cdb_error(6)
    if cdb[2] & 0x80:  # REPD: extended format
        data = TMF_SUPPORT + bytes((0, 0x0C)) + bytes(12)
    else:
        data = TMF_SUPPORT + bytes(2)
    return ScsiResult(GOOD, data[:alloc])


async def report_target_port_groups(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """One target port group, active/optimized, holding every portal group of the target."""
    cdb = cmd.cdb
    fmt = cdb[1] >> 5
    if fmt > 1:
        raise cdb_error(1, 7)
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    ports = lu.target.tpgts if lu.target is not None else (cmd.nexus.tpgt,)
    desc = bytearray((0x80, 0x01)) + struct.pack(">HBBBB", vpd.TARGET_PORT_GROUP, 0, 0, 0, len(ports))
    for port in ports:
        desc += struct.pack(">HH", 0, port)
    header = struct.pack(">I", len(desc) + (4 if fmt else 0))
    if fmt:
        header += bytes((0x10, 0, 0, 0))
    return ScsiResult(GOOD, (header + desc)[:alloc])


async def report_luns(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """Normally answered by ScsiTarget; an LU used on its own reports just itself."""
    if lu.target is not None:
        return await lu.target.report_luns(cmd)
    from .target import report_luns_data

    return report_luns_data(cmd, [lu.lun or 0])


# --- SPC-2 RESERVE / RELEASE ---------------------------------------------------------------


async def reserve(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """RESERVE(6)/(10): exclusive access for one nexus until RELEASE, reset or logout.

    With persistent reservation registrations present, SPC-3 5.6.3 (CRH=0) makes it conflict.
    """
    cdb = cmd.cdb
    if cdb[1] & 0x13:  # 3RDPTY, LONGID, extents: obsolete, unsupported
        raise cdb_error(1)
    if lu.pr.registrations or lu.pr.type:
        raise ReservationConflict
    if lu.res2 is not None and lu.res2 != cmd.nexus:
        raise ReservationConflict
    lu.res2 = cmd.nexus
    return ScsiResult(GOOD)


async def release(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """RELEASE(6)/(10): a no-op unless this nexus holds the reservation (SPC-2 7.17)."""
    cdb = cmd.cdb
    if cdb[1] & 0x13:
        raise cdb_error(1)
    if lu.pr.registrations or lu.pr.type:
        raise ReservationConflict
    if lu.res2 == cmd.nexus:
        lu.res2 = None
    return ScsiResult(GOOD)


A = Access.ALLOW
R = Access.READ
W = Access.WRITE

OPS: tuple[OpInfo, ...] = (
    OpInfo(0x00, "TEST UNIT READY", test_unit_ready, usage("00 00 00 00 00 00"), A),
    OpInfo(0x03, "REQUEST SENSE", request_sense, usage("03 01 00 00 ff 00"), A, res2_allowed=True),
    OpInfo(0x12, "INQUIRY", inquiry, usage("12 01 ff ff ff 00"), A, res2_allowed=True),
    OpInfo(0x15, "MODE SELECT(6)", mode_select6, usage("15 11 00 00 ff 00"), W),
    OpInfo(0x16, "RESERVE(6)", reserve, usage("16 00 00 00 00 00"), A),
    OpInfo(0x17, "RELEASE(6)", release, usage("17 00 00 00 00 00"), A, res2_allowed=True),
    OpInfo(0x1A, "MODE SENSE(6)", mode_sense6, usage("1a 08 ff ff ff 00"), R),
    OpInfo(0x55, "MODE SELECT(10)", mode_select10, usage("55 11 00 00 00 00 00 ff ff 00"), W),
    OpInfo(0x56, "RESERVE(10)", reserve, usage("56 00 00 00 00 00 00 00 00 00"), A),
    OpInfo(0x57, "RELEASE(10)", release, usage("57 00 00 00 00 00 00 00 00 00"), A, res2_allowed=True),
    OpInfo(0x5A, "MODE SENSE(10)", mode_sense10, usage("5a 18 ff ff 00 00 00 ff ff 00"), R),
    OpInfo(0xA0, "REPORT LUNS", report_luns, usage("a0 00 ff 00 00 00 ff ff ff ff 00 00"), A,
           res2_allowed=True),
    OpInfo(0xA3, "REPORT TARGET PORT GROUPS", report_target_port_groups,
           usage("a3 ea 00 00 00 00 ff ff ff ff 00 00"), A, sa=0x0A, res2_allowed=True),
    OpInfo(0xA3, "REPORT SUPPORTED OPERATION CODES", report_supported_opcodes,
           usage("a3 0c 87 ff ff ff ff ff ff ff 00 00"), R, sa=0x0C),
    OpInfo(0xA3, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", report_supported_tmfs,
           usage("a3 0d 80 00 00 00 ff ff ff ff 00 00"), R, sa=0x0D),
)

"""INQUIRY data: the standard page and the vital product data pages an SBC-3 disk offers.

The pages are built once per LU (and per target port for 83h, which names the port the command
came through) and then served from the LU's cache.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .types import Nexus

if TYPE_CHECKING:
    from .lu import LogicalUnit

# Version descriptors (SPC-4 table 28/29): SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
VERSION_DESCRIPTORS = (0x00A0, 0x0460, 0x04C0, 0x0960)

PROTO_ISCSI = 0x5
#: one target port group holds every portal group of the target
TARGET_PORT_GROUP = 1


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii", "replace")[:width].ljust(width, b" ")


def standard_inquiry(lu: LogicalUnit) -> bytes:
    buf = bytearray(96)
    buf[0] = 0x00  # peripheral qualifier 000b, direct access block device
    buf[1] = 0x00  # not removable
    buf[2] = 0x06  # SPC-4
    buf[3] = 0x12  # HISUP, response data format 2
    buf[4] = len(buf) - 5
    buf[5] = 0x10  # TPGS = 01b: implicit ALUA (REPORT TARGET PORT GROUPS)
    buf[6] = 0x00
    buf[7] = 0x02  # CMDQUE
    buf[8:16] = _ascii(lu.vendor, 8)
    buf[16:32] = _ascii(lu.product, 16)
    buf[32:36] = _ascii(lu.revision, 4)
    for i, desc in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", buf, 58 + 2 * i, desc)
    return bytes(buf)


def absent_lun_inquiry() -> bytes:
    """Standard INQUIRY for a LUN nobody mapped: qualifier 011b, device type 1Fh (SPC-4 6.6.2)."""
    buf = bytearray(36)
    buf[0] = 0x7F
    buf[2] = 0x06
    buf[3] = 0x12
    buf[4] = len(buf) - 5
    return bytes(buf)


def _page(code: int, body: bytes) -> bytes:
    return bytes((0x00, code)) + struct.pack(">H", len(body)) + body


def _designator(code_set: int, piv_assoc_type: int, value: bytes, proto: int = 0) -> bytes:
    return bytes(((proto << 4) | code_set, piv_assoc_type, 0, len(value))) + value


def _name_string(name: str) -> bytes:
    raw = name.encode() + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def supported_pages(lu: LogicalUnit) -> tuple[int, ...]:
    return (0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2)


def page_supported(lu: LogicalUnit) -> bytes:
    return _page(0x00, bytes(supported_pages(lu)))


def page_serial(lu: LogicalUnit) -> bytes:
    return _page(0x80, lu.serial.encode("ascii"))


def page_device_id(lu: LogicalUnit, nexus: Nexus) -> bytes:
    """Device Identification: the LU's NAA and T10 vendor IDs, then the target port and device.

    Association 00b = logical unit, 01b = target port, 10b = target device. Port designators carry
    PIV=1 and protocol iSCSI, as LIO and tgt do; Linux multipath and VMware read them.
    """
    body = bytearray()
    body += _designator(0x1, 0x03, lu.naa)  # binary, LU, NAA
    body += _designator(0x2, 0x01, _ascii(lu.vendor, 8) + lu.serial.encode("ascii"))  # T10 vendor ID
    body += _designator(0x1, 0x80 | 0x10 | 0x04, struct.pack(">HH", 0, nexus.tpgt), PROTO_ISCSI)
    body += _designator(0x1, 0x80 | 0x10 | 0x05, struct.pack(">HH", 0, TARGET_PORT_GROUP), PROTO_ISCSI)
    port_name = f"{nexus.target},t,0x{nexus.tpgt:04x}"
    body += _designator(0x3, 0x80 | 0x10 | 0x08, _name_string(port_name), PROTO_ISCSI)
    body += _designator(0x3, 0x80 | 0x20 | 0x08, _name_string(nexus.target), PROTO_ISCSI)
    return _page(0x83, bytes(body))


def page_extended_inquiry(lu: LogicalUnit) -> bytes:
    body = bytearray(60)
    body[1] = 0x07  # HEADSUP, ORDSUP, SIMPSUP: all task attributes accepted
    body[2] = 0x01  # V_SUP: there is a volatile cache (WCE=1) that SYNCHRONIZE CACHE flushes
    return _page(0x86, bytes(body))


def page_block_limits(lu: LogicalUnit) -> bytes:
    lim = lu.limits
    bs = lu.block_size
    body = bytearray(60)
    body[0] = 0x00  # WSNZ=0: WRITE SAME with 0 blocks means "to the end" (within max length)
    body[1] = min(lim.max_compare_write_blocks, 255)
    gran = max(1, 1 << lu.lbppbe)
    struct.pack_into(">H", body, 2, gran)  # OPTIMAL TRANSFER LENGTH GRANULARITY
    struct.pack_into(">I", body, 4, lu.max_xfer_blocks)
    struct.pack_into(">I", body, 8, max(1, lim.opt_transfer_bytes // bs))
    struct.pack_into(">I", body, 12, lu.max_xfer_blocks)  # MAXIMUM PREFETCH LENGTH
    if lu.thin:
        struct.pack_into(">I", body, 16, lim.max_unmap_lba_count)
        struct.pack_into(">I", body, 20, lim.max_unmap_descriptors)
        struct.pack_into(">I", body, 24, gran)  # OPTIMAL UNMAP GRANULARITY
        struct.pack_into(">I", body, 28, 0x80000000)  # UGAVALID, alignment 0
    struct.pack_into(">Q", body, 32, lim.max_write_same_blocks)
    struct.pack_into(">I", body, 40, lu.max_atomic_blocks)  # MAXIMUM ATOMIC TRANSFER LENGTH
    # ATOMIC ALIGNMENT, ATOMIC TRANSFER LENGTH GRANULARITY, boundary sizes: 0 = no constraint
    return _page(0xB0, bytes(body))


def page_block_characteristics(lu: LogicalUnit) -> bytes:
    body = bytearray(60)
    struct.pack_into(">H", body, 0, 1)  # MEDIUM ROTATION RATE: non-rotating
    return _page(0xB1, bytes(body))


def page_provisioning(lu: LogicalUnit) -> bytes:
    body = bytearray(4)
    if lu.thin:
        # LBPU (UNMAP), LBPWS (WRITE SAME 16 UNMAP), LBPWS10, LBPRZ (holes read as zeros)
        body[1] = 0x80 | 0x40 | 0x20 | 0x04
        body[2] = 0x02  # provisioning type: thin
    return _page(0xB2, bytes(body))

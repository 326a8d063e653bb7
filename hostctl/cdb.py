"""The three SCSI commands hostctl needs: READ CAPACITY(16), READ(16), WRITE(16).

The CDBs are built with pyscsi (``pyscsi.pyscsi.scsi_cdb_*``) when it is installed: it is the
library the design card names, and its command classes build and decode these blocks without a
device. Its ``SCSI`` class and iSCSI backend are not used: ``SCSI.execute`` is synchronous (and
``SCSI()`` issues an INQUIRY from its constructor), while hostctl's transport is the asyncio
:class:`storaged.iscsi.initiator.IscsiSession`; the released iSCSI backend (pyscsi 2.1.0) also fails
with cython-iscsi 1.0. If pyscsi is missing, the same bytes are packed with ``struct`` (the unit
tests check both agree), so hostctl never depends on it to run.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

try:  # pragma: no cover - exercised by whichever is installed
    from pyscsi.pyscsi.scsi_cdb_read16 import Read16 as _Read16
    from pyscsi.pyscsi.scsi_cdb_readcapacity16 import ReadCapacity16 as _ReadCapacity16
    from pyscsi.pyscsi.scsi_cdb_write16 import Write16 as _Write16
    from pyscsi.pyscsi.scsi_enum_command import sbc as _sbc

    HAVE_PYSCSI = True
except ImportError:  # pragma: no cover
    HAVE_PYSCSI = False

READ_16 = 0x88
WRITE_16 = 0x8A
SERVICE_ACTION_IN_16 = 0x9E
SA_READ_CAPACITY_16 = 0x10
READ_CAPACITY_16_LEN = 32


def read_capacity16_struct(alloc: int = READ_CAPACITY_16_LEN) -> bytes:
    return struct.pack(">BBQIBB", SERVICE_ACTION_IN_16, SA_READ_CAPACITY_16, 0, alloc, 0, 0)


def read16_struct(lba: int, blocks: int, block_size: int) -> bytes:
    return struct.pack(">BBQIBB", READ_16, 0, lba, blocks, 0, 0)


def write16_struct(lba: int, blocks: int, block_size: int, fua: bool = True) -> bytes:
    return struct.pack(">BBQIBB", WRITE_16, 0x08 if fua else 0, lba, blocks, 0, 0)


def read_capacity16(alloc: int = READ_CAPACITY_16_LEN) -> bytes:
    if HAVE_PYSCSI:
        return bytes(_ReadCapacity16(_sbc.SBC_OPCODE_9E, alloc).cdb)
    return read_capacity16_struct(alloc)


def read16(lba: int, blocks: int, block_size: int) -> bytes:
    if HAVE_PYSCSI:
        return bytes(_Read16(_sbc.READ_16, block_size, lba, blocks).cdb)
    return read16_struct(lba, blocks, block_size)


def write16(lba: int, blocks: int, block_size: int, fua: bool = True) -> bytes:
    if HAVE_PYSCSI:
        return bytes(_Write16(_sbc.WRITE_16, block_size, lba, blocks, b"", fua=int(fua)).cdb)
    return write16_struct(lba, blocks, block_size, fua)


@dataclass(frozen=True, slots=True)
class Capacity:
    blocks: int  # number of logical blocks (last LBA + 1)
    block_size: int

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


def parse_read_capacity16(data: bytes) -> Capacity:
    if len(data) < 12:
        raise ValueError(f"READ CAPACITY(16) returned {len(data)} bytes, expected at least 12")
    if HAVE_PYSCSI:
        r = _ReadCapacity16.unmarshall_datain(bytearray(data[:32].ljust(32, b"\0")))
        return Capacity(int(r["returned_lba"]) + 1, int(r["block_length"]))
    last, bs = struct.unpack_from(">QI", data)
    return Capacity(last + 1, bs)

"""The journal's on-disk format (docs/replication.md has the byte layout): entry headers and their
CRCs, the superblock, and the ring's geometry. Pure functions of bytes, shared by the primary's
append path, the secondary's copy and restore, the recovery scan and the crash-state explorer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c as _crc32c

ENTRY_MAGIC = b"SDJE"
SUPER_MAGIC = b"SDJS"
VERSION = 1  # entries; version 1 entries written before generations existed carry generation 0
SUPER_VERSION = 2  # superblock version 2 adds the generation; version 1 still reads (generation 0)
HEADER = struct.Struct(">4sHHQQIIQIQQI")  # 64 bytes
SUPER_V1 = struct.Struct(">4sHH64sQQQI")  # magic, version, block size, group, head, end, epoch, crc
SUPER = struct.Struct(">4sHH64sQQQQI")  # ... epoch, generation, crc
#: the superblock's own sector: open() rewrites only this, the rest of the 4 KiB header area
#: belongs to the activity log (storaged/repl/activity.py)
SUPER_BYTES = 512
FLAG_WRAP = 0x0001
FLAG_ZERO = 0x0002  # the range reads as zeros from now on (UNMAP, WRITE SAME of zeros): no data follows
FLAG_REJOURNAL = 0x0004  # P-VOL content re-journaled after an unclean stop (activity log), not a host write
HEAD_LBA_BYTES = 4096  # the superblock area before the ring


class JournalFull(Exception):
    """No room in the ring for this write (the group's journal-full policy decides what happens)."""


class JournalCorrupt(Exception):
    """The ring does not hold what the pointers say (bad CRC or a sequence gap where data must be)."""


def _crc(*parts: bytes | bytearray | memoryview) -> int:
    value = 0
    for p in parts:
        value = _crc32c.crc32c(p, value)
    return value


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    time_ns: int
    volume: int
    offset: int
    data: bytes
    #: where the entry starts in the ring, and how many bytes it occupies there (header + padded data)
    lba: int = 0
    span: int = 0
    #: for a zeroing entry (no data): how many bytes from ``offset`` read as zeros
    zero_length: int = 0
    rejournaled: bool = False  # FLAG_REJOURNAL

    @property
    def length(self) -> int:
        return self.zero_length or len(self.data)


def encode_entry(epoch: int, seq: int, time_ns: int, volume: int, offset: int,
                 data: bytes | bytearray | memoryview, block_size: int, flags: int = 0,
                 zero_length: int = 0, generation: int = 0) -> list[bytes | bytearray | memoryview]:
    """Header and data, padded to whole blocks, as buffers (the data is not copied).

    ``epoch`` is the journal's incarnation (from its superblock): entries left from an earlier
    use of the LUN never pass for current ones, even with the expected sequence number.
    ``generation`` is the primary's run (bumped by every open): a recovery scan never follows a
    chain into an entry of an earlier run, which may have been written but never acknowledged."""
    length = zero_length if flags & FLAG_ZERO else len(data)
    head = HEADER.pack(ENTRY_MAGIC, VERSION, flags, seq, time_ns, volume, length, offset, _crc(data), epoch,
                       generation, 0)
    head = head[:60] + _crc(head[:60]).to_bytes(4, "big")
    pad = -(len(head) + len(data)) % block_size
    return [head, data, bytes(pad)] if pad else [head, data]


@dataclass(frozen=True, slots=True)
class EntryHeader:
    flags: int
    seq: int
    time_ns: int
    volume: int
    length: int
    offset: int
    data_crc: int
    epoch: int
    generation: int = 0


def decode_header(buf: bytes | bytearray | memoryview) -> EntryHeader | None:
    """Parse an entry header; None when the bytes are not a valid header (end of the written ring)."""
    if len(buf) < HEADER.size or bytes(buf[:4]) != ENTRY_MAGIC:
        return None
    raw = bytes(buf[: HEADER.size])
    if _crc(raw[:60]) != int.from_bytes(raw[60:64], "big"):
        return None
    _m, version, flags, seq, t, volume, length, offset, dcrc, epoch, gen, _c = HEADER.unpack(raw)
    if version != VERSION:
        return None
    return EntryHeader(flags, seq, t, volume, length, offset, dcrc, epoch, gen)


def entry_span(length: int, block_size: int) -> int:
    return -(-(HEADER.size + length) // block_size) * block_size


@dataclass(slots=True)
class Ring:
    """The journal data region: byte offsets [head, end) of the journal LUN, used cyclically."""

    head: int
    end: int
    block_size: int

    @property
    def capacity(self) -> int:
        return self.end - self.head

    def used(self, out: int, inn: int) -> int:
        return (inn - out) % self.capacity if inn != out else 0

    def distance(self, a: int, b: int) -> int:
        """Bytes from position a forward to position b."""
        return (b - a) % self.capacity

    def place(self, at: int, span: int) -> tuple[int, bool]:
        """Where an entry of ``span`` bytes goes when the writer is at ``at``: (position, wrapped)."""
        if at + span <= self.end:
            return at, False
        return self.head, True


def encode_superblock(group: str, block_size: int, head: int, end: int, epoch: int, generation: int = 0) -> bytes:
    """The whole 4 KiB header area (the superblock, zeros after it: an empty activity log)."""
    name = group.encode()[:64].ljust(64, b"\0")
    body = SUPER.pack(SUPER_MAGIC, SUPER_VERSION, block_size, name, head, end, epoch, generation, 0)
    body = body[:-4] + _crc(body[:-4]).to_bytes(4, "big")
    return body.ljust(HEAD_LBA_BYTES, b"\0")


@dataclass(frozen=True, slots=True)
class Superblock:
    group: str
    block_size: int
    head: int
    end: int
    epoch: int
    generation: int = 0

    @property
    def ring(self) -> Ring:
        return Ring(self.head, self.end, self.block_size)


def decode_superblock(buf: bytes) -> Superblock | None:
    """Version 2, or version 1 (written before generations existed: generation 0)."""
    if len(buf) < SUPER.size or buf[:4] != SUPER_MAGIC:
        return None
    version = int.from_bytes(buf[4:6], "big")
    layout = SUPER_V1 if version == 1 else SUPER if version == SUPER_VERSION else None
    if layout is None:
        return None
    raw = buf[: layout.size]
    if _crc(raw[:-4]) != int.from_bytes(raw[-4:], "big"):
        return None
    fields = layout.unpack(raw)
    block_size, name, head, end, epoch = fields[2:7]
    generation = fields[7] if layout is SUPER else 0
    return Superblock(name.rstrip(b"\0").decode(errors="replace"), block_size, head, end, epoch, generation)

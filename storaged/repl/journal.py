"""Journal volumes (spec Fig. 12, 15): a ring of self-describing entries on a LUN.

The primary appends one entry per host write (sequence number, time, volume, offset, data) between
journal-in and journal-out; the secondary copies ring bytes to the same LBAs of its own journal
and restores entries in sequence order. Entries carry CRCs and consecutive sequence numbers, so a
ring can always be re-read from a persisted pointer: that is how journal-in is recovered after a
crash without being persisted on every write. ``docs/replication.md`` has the byte layout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..backstore.base import Backstore

# The format's names stay importable from here (the primary, secondary, explorer and tests use them).
from .journal_format import (  # noqa: F401
    ENTRY_MAGIC,
    FLAG_REJOURNAL,
    FLAG_WRAP,
    FLAG_ZERO,
    HEAD_LBA_BYTES,
    HEADER,
    SUPER,
    SUPER_BYTES,
    SUPER_MAGIC,
    SUPER_V1,
    SUPER_VERSION,
    VERSION,
    Entry,
    EntryHeader,
    JournalCorrupt,
    JournalFull,
    Ring,
    Superblock,
    _crc,
    decode_header,
    decode_superblock,
    encode_entry,
    encode_superblock,
    entry_span,
)


@dataclass(slots=True)
class Reservation:
    """A write's place in the journal, between reserve() and commit()."""

    seq: int
    pos: int
    span: int
    wrap_at: int | None
    time_ns: int
    volume: int
    offset: int
    data: bytes | bytearray | memoryview = field(repr=False)
    zero_length: int = 0
    end_pos: int = 0
    flags: int = 0


@dataclass(slots=True)
class PrimaryPointers:
    out_pos: int  # journal-out (1511): oldest unpurged entry
    out_seq: int  # its sequence number (= next_seq when empty)
    in_pos: int  # journal-in (1512): where the next entry goes
    next_seq: int
    oldest_time_ns: int = 0  # time of the entry at journal-out, 0 when empty

    def to_dict(self) -> dict[str, int]:
        return {"out_pos": self.out_pos, "out_seq": self.out_seq, "in_pos": self.in_pos, "next_seq": self.next_seq}


class PrimaryJournal:
    """Appends entries for one journal group's writes; purges what the secondary has taken."""

    def __init__(self, store: Backstore, sb: Superblock, ptr: PrimaryPointers) -> None:
        self.store = store
        self.sb = sb
        self.group = sb.group
        self.ring = sb.ring
        self.ptr = ptr
        self.entries = 0
        #: the entries written without a gap: what readers (the secondary) may take
        self.committed_seq = ptr.next_seq - 1
        self.committed_pos = ptr.in_pos
        #: the committed point sampled before the last completed flush of the store: what a power
        #: cut cannot take away, so all a secondary may acquire
        self.durable_seq = self.committed_seq
        self.durable_pos = self.committed_pos
        self.broken = ""
        self._pending: dict[int, Reservation] = {}
        self._written: set[int] = set()
        self._commit_changed = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._next_flush: asyncio.Future[None] | None = None

    @classmethod
    async def format(cls, store: Backstore, group: str, block_size: int) -> PrimaryJournal:
        sb = await format_journal(store, group, block_size)
        return cls(store, sb, PrimaryPointers(sb.head, 1, sb.head, 1))

    @classmethod
    async def open(cls, store: Backstore, group: str, out_pos: int, out_seq: int) -> tuple[PrimaryJournal, list[Entry]]:
        """Reopen after a restart: find journal-in by scanning from the persisted journal-out.

        Returns the journal and the entries found (the caller redoes them on the P-VOLs, since a
        crash may have come between the journal write and the volume write). Before returning,
        the superblock's generation is bumped and made durable (FUA, which also makes the
        recovered entries durable): entries written from now on carry it, so a later scan can
        tell them from entries of this run's predecessors that were never acknowledged."""
        old = await load_superblock(store, group)
        found = await read_entries(store, old, out_pos, out_seq, stop_at=None, generation=old.generation)
        sb = Superblock(old.group, old.block_size, old.head, old.end, old.epoch, old.generation + 1)
        await store.write(0, encode_superblock(sb.group, sb.block_size, sb.head, sb.end, sb.epoch,
                                               sb.generation)[:SUPER_BYTES], fua=True)
        ring = sb.ring
        j = cls(store, sb, PrimaryPointers(out_pos, out_seq, out_pos, out_seq))
        if found:
            last = found[-1]
            j.ptr.in_pos = last.lba + last.span
            if j.ptr.in_pos >= ring.end:
                j.ptr.in_pos = ring.head
            j.ptr.next_seq = last.seq + 1
            j.ptr.oldest_time_ns = found[0].time_ns
        j.entries = len(found)
        j.committed_seq, j.committed_pos = j.ptr.next_seq - 1, j.ptr.in_pos
        j.durable_seq, j.durable_pos = j.committed_seq, j.committed_pos  # the FUA above covered them
        return j, found

    async def scan(self, pos: int, seq: int, stop_at: int | None) -> list[Entry]:
        """Read consecutive entries from ``pos`` (expected to hold ``seq``) until the data ends."""
        return await read_entries(self.store, self.sb, pos, seq, stop_at, generation=self.sb.generation)

    # --- appending -----------------------------------------------------------------------------

    def free(self) -> int:
        return self.ring.capacity - self.ring.used(self.ptr.out_pos, self.ptr.in_pos) - self.ring.block_size

    def fits(self, length: int) -> bool:
        span = entry_span(length, self.ring.block_size)
        _pos, wrapped = self.ring.place(self.ptr.in_pos, span)
        waste = self.ring.end - self.ptr.in_pos if wrapped else 0
        return span + waste <= self.free()

    def reserve(self, volume: int, offset: int, data: bytes | bytearray | memoryview,
                time_ns: int | None = None, zero_length: int = 0, flags: int = 0) -> Reservation:
        """Give a write its sequence number and ring position (no I/O; the caller holds the
        group lock, which makes reservation order the group's write order)."""
        if self.broken:
            raise JournalFull(f"journal of group {self.group} failed earlier: {self.broken}")
        if not self.fits(len(data)):
            raise JournalFull(f"journal of group {self.group} is full ({self.ring.used(self.ptr.out_pos, self.ptr.in_pos)}"
                              f" of {self.ring.capacity} bytes in use)")
        span = entry_span(len(data), self.ring.block_size)
        pos, wrapped = self.ring.place(self.ptr.in_pos, span)
        r = Reservation(self.ptr.next_seq, pos, span, self.ptr.in_pos if wrapped else None,
                        time_ns if time_ns is not None else time.time_ns(), volume, offset, data, zero_length,
                        flags=flags)
        nxt = pos + span
        self.ptr.in_pos = nxt if nxt < self.ring.end else self.ring.head
        self.ptr.next_seq += 1
        r.end_pos = self.ptr.in_pos
        self._pending[r.seq] = r
        return r

    async def write_reserved(self, r: Reservation) -> None:
        """Write a reserved entry; many run at once, each at its own place in the ring."""
        bs = self.ring.block_size
        epoch, gen = self.sb.epoch, self.sb.generation
        try:
            if r.wrap_at is not None:
                # The rest of the ring is unused: a marker sends readers back to the head.
                await self.store.writev(r.wrap_at, encode_entry(epoch, r.seq, 0, 0, 0, b"", bs, FLAG_WRAP,
                                                                generation=gen))
            flags = (FLAG_ZERO if r.zero_length else 0) | r.flags
            await self.store.writev(r.pos, encode_entry(epoch, r.seq, r.time_ns, r.volume, r.offset, r.data, bs,
                                                        flags, r.zero_length, gen))
        except BaseException as exc:
            self.broken = self.broken or f"{type(exc).__name__}: {exc}"
            self._commit_changed.set()
            raise

    async def commit(self, r: Reservation) -> None:
        """Wait until this entry and every earlier one are written. Only then may the write reach
        the volume or be acknowledged: a journal read after a crash stops at the first missing
        entry, so nothing after a gap may have been applied or promised."""
        self._written.add(r.seq)
        while self.committed_seq + 1 in self._written:
            seq = self.committed_seq + 1
            self._written.discard(seq)
            done = self._pending.pop(seq)
            if self.entries == 0:
                self.ptr.oldest_time_ns = done.time_ns
            self.entries += 1
            self.committed_seq = seq
            self.committed_pos = done.end_pos
        self._commit_changed.set()
        while self.committed_seq < r.seq:
            if self.broken:
                raise JournalFull(f"journal of group {self.group} failed: {self.broken}")
            self._commit_changed.clear()
            await self._commit_changed.wait()

    async def append(self, volume: int, offset: int, data: bytes | bytearray | memoryview,
                     time_ns: int | None = None, zero_length: int = 0, flags: int = 0) -> Entry:
        """Reserve, write and commit one entry (with ``zero_length``: "this range now reads as
        zeros", no data)."""
        r = self.reserve(volume, offset, data, time_ns, zero_length, flags)
        await self.write_reserved(r)
        await self.commit(r)
        # built here, not in commit(): the host write path has no use for a copy of its data
        return Entry(r.seq, r.time_ns, r.volume, r.offset, bytes(r.data), r.pos, r.span, r.zero_length,
                     bool(r.flags & FLAG_REJOURNAL))

    async def flush(self) -> None:
        """Make every committed entry durable (FUA, SYNCHRONIZE CACHE)."""
        await self.make_durable()

    async def make_durable(self) -> None:
        """Move the durable point up to the committed point (no I/O when it is there already)."""
        if self.committed_seq > self.durable_seq:
            await self.flush_store()

    async def flush_store(self) -> None:
        """A flush of the journal store that starts after this call. Callers at the same time
        share one: while a flush runs, the next callers wait for a single one after it."""
        loop = asyncio.get_running_loop()
        if self._next_flush is None:
            self._next_flush = loop.create_future()
        fut = self._next_flush  # the round that has not started its flush yet
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_rounds())
        await asyncio.shield(fut)

    async def _flush_rounds(self) -> None:
        try:
            while self._next_flush is not None:
                fut, self._next_flush = self._next_flush, None
                seq, pos = self.committed_seq, self.committed_pos  # sampled before the flush starts
                try:
                    await self.store.flush()
                except Exception as exc:  # noqa: BLE001 - handed to every caller of this round
                    if not fut.done():
                        fut.set_exception(exc)
                        fut.exception()  # retrieved here too: a cancelled caller must not leave it unseen
                else:
                    if seq > self.durable_seq:
                        self.durable_seq, self.durable_pos = seq, pos
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._flusher = None

    def recover_from_failure(self) -> bool:
        """Accept appends again after a failed entry write (pairresync after PSUE); True if the
        journal was restarted, empty, at new pointers the secondary must adopt.

        Entries reserved after the failure may sit in the ring without ever having been committed,
        so their sequence numbers are never reused (a reused number at the same place could bring
        a stale entry back after a crash): the journal restarts empty just past every reservation.
        Only possible once the secondary has taken everything committed (journal-out at the
        committed end); the caller holds the group lock with journaling suspended."""
        if not self.broken:
            return False
        if self.ptr.out_seq != self.committed_seq + 1:
            raise JournalFull(f"journal of group {self.group} failed ({self.broken}) and still holds entries "
                              f"{self.ptr.out_seq}..{self.committed_seq}: acquire and purge them first")
        self.broken = ""
        self._pending.clear()
        self._written.clear()
        self.ptr.out_pos = self.committed_pos = self.ptr.in_pos
        self.ptr.out_seq = self.ptr.next_seq
        self.committed_seq = self.ptr.next_seq - 1
        self.entries = 0
        self.ptr.oldest_time_ns = 0
        self._commit_changed.set()
        return True

    # --- purging -------------------------------------------------------------------------------

    async def purge(self, upto_pos: int, upto_seq: int) -> None:
        """Free every entry before ``upto_pos`` (which holds ``upto_seq``, or is journal-in)."""
        if upto_seq < self.ptr.out_seq or upto_seq > self.committed_seq + 1:
            raise ValueError(f"purge to sequence {upto_seq} outside {self.ptr.out_seq}..{self.committed_seq + 1}")
        if upto_seq == self.committed_seq + 1:
            upto_pos = self.committed_pos
        freed = upto_seq - self.ptr.out_seq
        self.ptr.out_pos = upto_pos
        self.ptr.out_seq = upto_seq
        self.entries = max(0, self.entries - freed)
        if self.entries == 0:
            self.ptr.oldest_time_ns = 0
        else:
            hdr = decode_header(await self.store.read(upto_pos, HEADER.size))
            if hdr is not None and hdr.flags & FLAG_WRAP:
                self.ptr.out_pos = self.ring.head
                hdr = decode_header(await self.store.read(self.ring.head, HEADER.size))
            self.ptr.oldest_time_ns = hdr.time_ns if hdr is not None else 0

    def status(self) -> dict[str, int]:
        used = self.ring.used(self.ptr.out_pos, self.ptr.in_pos)
        return {"journal_out": self.ptr.out_pos, "journal_in": self.committed_pos, "out_seq": self.ptr.out_seq,
                "next_seq": self.committed_seq + 1, "durable_in": self.durable_pos, "durable_seq": self.durable_seq,
                "entries": self.entries, "bytes_used": used,
                "capacity": self.ring.capacity, "head": self.ring.head, "end": self.ring.end,
                "oldest_time_ns": self.ptr.oldest_time_ns}


async def format_journal(store: Backstore, group: str, block_size: int) -> Superblock:
    """Give a LUN to a journal group: a fresh superblock with a new epoch; the ring starts empty."""
    import secrets

    end = store.size - store.size % block_size
    if end - HEAD_LBA_BYTES < 64 * block_size:
        raise ValueError(f"a journal LUN of {store.size} bytes is too small")
    sb = Superblock(group, block_size, HEAD_LBA_BYTES, end, secrets.randbits(63) or 1, 1)
    await store.write(0, encode_superblock(group, block_size, sb.head, sb.end, sb.epoch, sb.generation), fua=True)
    return sb


async def load_superblock(store: Backstore, group: str) -> Superblock:
    sb = decode_superblock(await store.read(0, HEAD_LBA_BYTES))
    if sb is None or sb.group != group:
        raise JournalCorrupt(f"the journal LUN holds no superblock for group {group!r}")
    return sb


def generation_ok(previous: int, current: int, limit: int) -> bool:
    """May an entry of generation ``current`` follow one of ``previous`` in a recovery scan?
    Generations never decrease along the journal, and none is newer than the superblock's."""
    return previous <= current <= limit


async def read_entries(store: Backstore, sb: Superblock, pos: int, seq: int, stop_at: int | None,
                       max_bytes: int = 1 << 62, generation: int | None = None) -> list[Entry]:
    """Consecutive valid entries from ``pos`` (first must carry ``seq``), following wrap markers,
    up to ``stop_at`` (a ring position) or the first invalid header; data CRCs are verified.

    With ``generation`` (the primary's recovery scan) the chain also ends at an entry whose
    generation is lower than its predecessor's or higher than ``generation`` (see
    :func:`generation_ok`); a secondary reads only what the primary committed and passes None."""
    ring = sb.ring
    out: list[Entry] = []
    total = 0
    bs = ring.block_size
    gen = 0
    while total < max_bytes:
        if stop_at is not None and pos == stop_at:
            break
        hdr = decode_header(await store.read(pos, bs))
        if hdr is not None and generation is not None and not generation_ok(gen, hdr.generation, generation):
            hdr = None
        if hdr is None or hdr.seq != seq or hdr.epoch != sb.epoch:
            if stop_at is not None:
                raise JournalCorrupt(f"no entry {seq} at ring position {pos}")
            break
        gen = hdr.generation
        if hdr.flags & FLAG_WRAP:
            pos = ring.head
            continue
        data_len = 0 if hdr.flags & FLAG_ZERO else hdr.length
        span = entry_span(data_len, bs)
        if pos + span > ring.end:
            raise JournalCorrupt(f"entry {seq} at {pos} runs past the ring end")
        raw = await store.read(pos, span)
        data = raw[HEADER.size : HEADER.size + data_len]
        if _crc(data) != hdr.data_crc:
            if stop_at is not None:
                raise JournalCorrupt(f"entry {seq} at {pos}: data checksum mismatch")
            break  # a torn tail after a crash: the entry was never acknowledged
        out.append(Entry(hdr.seq, hdr.time_ns, hdr.volume, hdr.offset, bytes(data), pos, span,
                         hdr.length if hdr.flags & FLAG_ZERO else 0, bool(hdr.flags & FLAG_REJOURNAL)))
        total += span
        seq += 1
        pos += span
        if pos >= ring.end:
            pos = ring.head
    return out

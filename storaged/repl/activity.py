"""The activity log of a primary journal group (after DRBD's): the volume extents that may hold
writes not yet durable, persisted before the first write into an extent that is not in it.

Why: a volume write is issued once its journal entry is *written*, not once it is *durable*. A
power cut with a reordering cache can keep the volume write and lose the entry: the P-VOL then
holds data the secondary will never receive. After an unclean stop every extent in the log is
*suspect*; :func:`recover_primary` re-journals the P-VOL's current content of those extents as
ordinary entries, so the secondary receives it in order and the pair stays consistent without a
copy. An extent leaves the log only when the journal and then the volumes have been flushed.

Where: in the 4 KiB header area of the journal LUN, after the superblock's sector, as two
alternating copies with a counter and a CRC (a torn update leaves the other copy, which holds a
superset of what was durable). One update is one small write plus one flush of the journal store,
which makes committed journal entries durable as well (docs/power-loss.md has the figures).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..backstore.base import Backstore
from .journal import FLAG_REJOURNAL, HEAD_LBA_BYTES, SUPER_BYTES, Entry, JournalFull, PrimaryJournal, _crc

log = logging.getLogger("storaged.repl")

#: DRBD's extent size; a multiple of the differential bitmap's region (primary.REGION)
EXTENT = 4 << 20
#: default slots: 256 x 4 MiB = 1 GiB that may be written without a log update; also the most a
#: recovery re-journals (it must fit in the journal)
SLOTS = 256
AL_MAGIC = b"SDAL"
_HEAD = struct.Struct(">4sHHQI")  # magic, version, count, counter, extent size
_REC = struct.Struct(">HI")  # volume, extent index
COPY_BYTES = (HEAD_LBA_BYTES - SUPER_BYTES) // 2
MAX_SLOTS = (COPY_BYTES - _HEAD.size - 4) // _REC.size  # what one copy can hold
_VOL_SHIFT = 40  # an extent's key: volume << 40 | extent index


def _key(volume: int, ext: int) -> int:
    return volume << _VOL_SHIFT | ext


def _split(key: int) -> tuple[int, int]:
    return key >> _VOL_SHIFT, key & ((1 << _VOL_SHIFT) - 1)


def encode_log(counter: int, extent: int, keys: Iterable[int]) -> bytes:
    recs = b"".join(_REC.pack(*_split(k)) for k in sorted(keys))
    n = len(recs) // _REC.size
    if n > MAX_SLOTS:
        raise ValueError(f"activity log of {n} extents does not fit ({MAX_SLOTS} at most)")
    body = _HEAD.pack(AL_MAGIC, 1, n, counter, extent) + recs
    return (body + _crc(body).to_bytes(4, "big")).ljust(COPY_BYTES, b"\0")


def decode_log(buf: bytes) -> tuple[int, int, set[int]] | None:
    """(counter, extent size, keys) of one copy, or None when it is not a valid copy."""
    if len(buf) < _HEAD.size or buf[:4] != AL_MAGIC:
        return None
    _m, version, n, counter, extent = _HEAD.unpack(buf[: _HEAD.size])
    end = _HEAD.size + n * _REC.size
    if version != 1 or n > MAX_SLOTS or _crc(buf[:end]) != int.from_bytes(buf[end : end + 4], "big"):
        return None
    keys = {_key(*_REC.unpack_from(buf, _HEAD.size + i * _REC.size)) for i in range(n)}
    return counter, extent, keys


class ActivityLog:
    """The hot extents of one group's P-VOLs. :meth:`enter` is called for every journaled volume
    write before it is issued, :meth:`leave` when it is done; a hit costs a dict update."""

    def __init__(self, journal: PrimaryJournal, extent: int = EXTENT, slots: int = SLOTS,
                 flush_volumes: Callable[[set[int]], Awaitable[None]] | None = None,
                 counter: int = 0) -> None:
        if extent & (extent - 1) or extent < 4096:
            raise ValueError("the activity log extent is a power of two of at least 4 KiB")
        if not 0 < slots <= MAX_SLOTS:
            raise ValueError(f"activity log slots must be 1..{MAX_SLOTS}")
        self.journal = journal
        self.extent = extent
        self.shift = extent.bit_length() - 1
        self.slots = slots
        self.flush_volumes = flush_volumes
        self.counter = counter
        #: hot extents (persisted) -> writes in flight in them; dict order is least recently entered first
        self._hot: dict[int, int] = {}
        self._pending: dict[int, int] = {}  # extents waiting for the next update -> writes waiting
        self._batch: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self.updates = 0  # persisted updates (observability, tests)

    @classmethod
    async def load(cls, journal: PrimaryJournal, extent: int = EXTENT, slots: int = SLOTS,
                   flush_volumes: Callable[[set[int]], Awaitable[None]] | None = None) -> tuple[ActivityLog, set[int]]:
        """The log as persisted, and the keys it holds (suspect after an unclean stop). The
        suspects stay hot: they leave the log like any other extent, after flushes."""
        raw = await journal.store.read(SUPER_BYTES, 2 * COPY_BYTES)
        copies = [c for c in (decode_log(raw[:COPY_BYTES]), decode_log(raw[COPY_BYTES:])) if c is not None]
        counter, old_extent, keys = max(copies, key=lambda c: c[0]) if copies else (0, extent, set())
        al = cls(journal, extent, max(slots, min(MAX_SLOTS, len(keys))), flush_volumes, counter)
        if old_extent != extent:  # re-express the suspects in the new extent size
            keys = {_key(v, (e * old_extent + off) >> al.shift) for v, e in map(_split, keys)
                    for off in range(0, old_extent, min(old_extent, extent))}
        al._hot = dict.fromkeys(sorted(keys), 0)
        return al, keys

    @property
    def hot(self) -> set[tuple[int, int]]:
        return {_split(k) for k in self._hot}

    def ranges(self, keys: Iterable[int]) -> list[tuple[int, int, int]]:
        """(volume, offset, length) of each key's extent, in order."""
        return [(v, e << self.shift, self.extent) for v, e in map(_split, sorted(keys))]

    # --- the write path --------------------------------------------------------------------------

    def enter(self, volume: int, start: int, end: int) -> asyncio.Future[None] | None:
        """Count a volume write into [start, end) as in flight; None when its extents are in the
        persisted log (write now), else a future to await before writing."""
        first, last = start >> self.shift, (max(end, start + 1) - 1) >> self.shift
        hot = self._hot
        if first == last:
            key = volume << _VOL_SHIFT | first
            n = hot.pop(key, None)
            if n is not None:
                hot[key] = n + 1  # re-inserted: most recently entered
                return None
        wait = None
        for ext in range(first, last + 1):
            key = volume << _VOL_SHIFT | ext
            n = hot.pop(key, None)
            if n is not None:
                hot[key] = n + 1
                continue
            self._pending[key] = self._pending.get(key, 0) + 1
            wait = self._schedule()
        return wait

    def leave(self, volume: int, start: int, end: int) -> None:
        first, last = start >> self.shift, (max(end, start + 1) - 1) >> self.shift
        for ext in range(first, last + 1):
            key = volume << _VOL_SHIFT | ext
            n = self._hot.get(key)
            if n is not None:
                self._hot[key] = n - 1
                if n == 1:
                    self._idle.set()
            elif key in self._pending:
                self._pending[key] -= 1  # its update failed or is still to come: drop the claim

    def _schedule(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = loop.create_future()
        if self._task is None:
            self._task = loop.create_task(self._updates())
        return self._batch

    async def _updates(self) -> None:
        """One persisted update per batch of new extents: writes that arrive together share it."""
        try:
            while self._batch is not None:
                await asyncio.sleep(0)  # let the writes issued together join this batch
                fut, self._batch = self._batch, None
                adding, self._pending = self._pending, {}
                try:
                    await self._make_room(len(adding))
                    await self._persist(set(self._hot) | set(adding))
                except Exception as exc:  # noqa: BLE001 - handed to the writes waiting for it
                    fut.set_exception(exc)
                    fut.exception()
                    continue
                for key, n in adding.items():
                    self._hot[key] = self._hot.get(key, 0) + n
                fut.set_result(None)
        finally:
            self._task = None

    async def _make_room(self, adding: int) -> None:
        """Evict least recently entered extents with nothing in flight: journal, then volumes
        made durable, before the update that leaves them out is written (by the caller)."""
        while len(self._hot) + adding > self.slots:
            need = len(self._hot) + adding - self.slots
            victims = [k for k, n in self._hot.items() if n == 0][:need]
            if not victims:
                if len(self._hot) + adding <= MAX_SLOTS:
                    return  # everything is busy: go over the soft limit rather than stall the writers
                self._idle.clear()
                await self._idle.wait()
                continue
            for k in victims:  # out of the hot set now: a new write into one waits for the next update
                del self._hot[k]
            await self.journal.make_durable()
            if self.flush_volumes is not None:
                await self.flush_volumes({k >> _VOL_SHIFT for k in victims})

    async def _persist(self, keys: set[int]) -> None:
        self.counter += 1
        at = SUPER_BYTES + (self.counter % 2) * COPY_BYTES
        await self.journal.store.write(at, encode_log(self.counter, self.extent, keys))
        await self.journal.flush_store()
        self.updates += 1

    async def empty(self) -> None:
        """Clean shutdown (host writes stopped): journal and volumes durable, then an empty log,
        so the next start has nothing to re-journal."""
        while self._task is not None:
            await asyncio.sleep(0)
        await self.journal.make_durable()
        if self.flush_volumes is not None:
            await self.flush_volumes({k >> _VOL_SHIFT for k in self._hot})
        self._hot.clear()
        await self._persist(set())


@dataclass
class Recovered:
    """What :func:`recover_primary` did; ``unjournaled`` (volume -> REGION indices) must go into
    the differential bitmap and the group suspend, for lack of journal room."""

    journal: PrimaryJournal
    activity: ActivityLog
    tail: list[Entry]
    suspects: list[tuple[int, int, int]] = field(default_factory=list)
    rejournaled: int = 0
    unjournaled: dict[int, set[int]] = field(default_factory=dict)


async def redo(tail: Iterable[Entry], volumes: Mapping[int, Backstore]) -> None:
    """Apply recovered entries to the P-VOLs (a crash may have come between journal and volume)."""
    for e in tail:
        store = volumes.get(e.volume)
        if store is None:
            log.warning("journal entry %d is for volume %d, which is not in the group any more", e.seq, e.volume)
            continue
        if e.zero_length:
            await store.write_zeroes(e.offset, e.zero_length)
        else:
            await store.write(e.offset, e.data)


async def recover_primary(jstore: Backstore, group: str, out_pos: int, out_seq: int,
                          volumes: Mapping[int, Backstore], journaling: bool = True,
                          extent: int = EXTENT, slots: int = SLOTS, chunk: int = 1 << 20) -> Recovered:
    """Start-up of a primary group: reopen the journal (new generation), redo its tail on the
    P-VOLs, then re-journal the current content of every extent the activity log names, so that
    whatever the P-VOLs hold there reaches the secondary in order. ``volumes`` are the P-VOLs'
    own stores (not journaled). With ``journaling`` False (the group is suspended) or when the
    journal has no room, the extents are returned in ``unjournaled`` instead."""
    from .primary import REGION

    journal, tail = await PrimaryJournal.open(jstore, group, out_pos, out_seq)
    redone: dict[int, set[int]] = {}
    if journaling:
        await redo(tail, volumes)
        # The redo passes blocks through older contents (the tail in order) and may end with the
        # group suspended (no room to re-journal below), after which no start redoes again: the
        # P-VOLs must hold the redone result durably first, or a power cut keeps an older step.
        await asyncio.gather(*(volumes[v].flush() for v in {e.volume for e in tail} if v in volumes))
    else:
        # Suspended: writes after the tail went to the bitmap and may be newer than it; a redo
        # would put older data over acknowledged, flushed writes. The regions are resynced instead.
        for e in tail:
            redone.setdefault(e.volume, set()).update(range(e.offset // REGION,
                                                            (e.offset + max(e.length, 1) - 1) // REGION + 1))

    async def flush(vols: set[int]) -> None:
        await asyncio.gather(*(volumes[v].flush() for v in vols if v in volumes))

    al, keys = await ActivityLog.load(journal, extent, slots, flush)
    rec = Recovered(journal, al, tail, al.ranges(keys), unjournaled=redone)
    for volume, offset, length in rec.suspects:
        store = volumes.get(volume)
        if store is None:
            continue  # the volume left the group: nothing of it is replicated any more
        end = min(offset + length, store.size)
        pos = offset
        while pos < end:
            n = min(chunk, end - pos)
            if journaling:
                n = await _rejournal(journal, store, volume, pos, n)
            if not n:  # no room: the rest goes to the bitmap
                journaling = False
                continue
            if not journaling:
                rec.unjournaled.setdefault(volume, set()).update(range(pos // REGION, (pos + n - 1) // REGION + 1))
            else:
                rec.rejournaled += n
            pos += n
    await journal.make_durable()
    if rec.suspects:
        log.warning("group %s: unclean stop: %d suspect extents, %d bytes re-journaled, %d regions to resync",
                    group, len(rec.suspects), rec.rejournaled, sum(len(v) for v in rec.unjournaled.values()))
    return rec


async def _rejournal(journal: PrimaryJournal, store: Backstore, volume: int, pos: int, n: int) -> int:
    """Journal [pos, pos+n) of a P-VOL as it is now (holes as zeroing entries); 0 if no room
    (an entry or two may have been written: the caller puts the whole range in the bitmap)."""
    try:
        for e in await store.extents(pos, n):
            if e.mapped:
                await journal.append(volume, e.offset, await store.read(e.offset, e.length), flags=FLAG_REJOURNAL)
            else:
                await journal.append(volume, e.offset, b"", zero_length=e.length, flags=FLAG_REJOURNAL)
    except JournalFull:
        return 0
    return n

"""Crash states of the primary's real write path, and the invariants recovery must keep.

A *life* of the primary: recover_primary on the stores as a crash left them, then concurrent
writers (two P-VOLs of one group, overlapping LBAs, FUA writes, SYNCHRONIZE CACHE, zeroing) through
JournaledStore/WriteOrder/PrimaryJournal/ActivityLog, while a secondary acquires journal entries
and purges, all over :class:`RecordingStore` s. A *crash state* of a life: a trace index plus a
rule for which not-yet-durable writes survive (all: a process crash; none; random blocks: a
reordering cache with torn writes; a prefix per store). Each state is recovered with the real
recovery and checked; some become the start of a second life, so stale data of the first life
can show up in the second (defect 1). Every violation names the seed and the crash state(s).
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from storaged.repl.activity import recover_primary
from storaged.repl.journal import Entry, PrimaryJournal, decode_header, read_entries
from storaged.repl.primary import REGION, JournaledStore, WriteOrder
from storaged.testing.recording import BLOCK, RecordingStore, Trace, crash_image, persist, persisted

VOLS = (0, 1)
VOL_SIZE = 64 * 1024
JNL_SIZE = 4096 + 512 * 1024
AL_EXTENT, AL_SLOTS = 8 * 1024, 4
LENGTHS = (512, 1024, 4096, 4096, 4096, 8192)
REJOURNAL_CHUNK = 4096  # re-journaled entries as long as the common writes: stale entries line up
MODES = ("all", "none", "blocks", "prefix")


@dataclass
class Config:
    writers: int = 10  # queue depth
    ops: int = 5  # per writer and life
    acquire: str = "durable"  # "committed": the secondary takes what is committed (the old rule)
    activity: bool = True  # False: no activity log (the old write path)
    purge_flushes: bool = True  # False: journal-out persisted with no flush or wait first (the old purge)
    lives: int = 2
    states: tuple[int, ...] = (24, 10)  # crash states checked per life
    continued: int = 2  # crash states of a life that start another life


@dataclass
class Write:
    wid: int
    volume: int
    offset: int
    data: bytes
    fua: bool
    issued: int
    acked: int | None = None

    def block(self, b: int) -> bytes:
        at = b * BLOCK - self.offset
        return self.data[at : at + BLOCK]


@dataclass
class Secondary:
    """The secondary as oracle: the entries it acquired, in order, and where it will read next."""

    entries: list[Entry] = field(default_factory=list)
    read_pos: int = 0
    read_seq: int = 1

    def copy(self) -> Secondary:
        return Secondary(list(self.entries), self.read_pos, self.read_seq)


@dataclass
class Life:
    trace: Trace
    initial: dict[str, bytes]
    out: tuple[int, int]
    secondary: Secondary  # as this life started
    start: dict[int, bytes] = field(default_factory=dict)  # P-VOLs right after recovery
    writes: list[Write] = field(default_factory=list)
    flushes: list[tuple[int, int, int]] = field(default_factory=list)  # volume, start, end index
    acquired: list[tuple[int, list[Entry], int, int]] = field(default_factory=list)  # index, entries, read_pos, read_seq
    durable: list[tuple[int, int]] = field(default_factory=list)  # index, durable seq reported
    error: str = ""


def pattern(wid: int, length: int) -> bytes:
    return b"".join(struct.pack(">IIQ", wid, b, 0x5EED) * (BLOCK // 16) for b in range(length // BLOCK))


async def fresh_images() -> dict[str, bytes]:
    store = RecordingStore("j", Trace(), bytes(JNL_SIZE))
    await PrimaryJournal.format(store, "g", BLOCK)
    return {"j": bytes(store.image), **{f"v{v}": bytes(VOL_SIZE) for v in VOLS}}


async def live(cfg: Config, rng: random.Random, initial: dict[str, bytes], out: tuple[int, int],
               secondary: Secondary, wid0: int) -> Life:
    """Run one life and record it."""
    trace = Trace(rng=random.Random(rng.random()), yield_chance=0.3)
    life = Life(trace, initial, out, secondary.copy())
    stores = {n: RecordingStore(n, trace, img) for n, img in initial.items()}
    vols = {v: stores[f"v{v}"] for v in VOLS}
    try:
        rec = await recover_primary(stores["j"], "g", out[0], out[1], vols, extent=AL_EXTENT, slots=AL_SLOTS,
                                    chunk=REJOURNAL_CHUNK)
    except Exception as exc:  # noqa: BLE001 - reported as a violation of the state that led here
        life.error = f"recovery failed: {type(exc).__name__}: {exc}"
        return life
    life.start = {v: bytes(s.image) for v, s in vols.items()}
    journal = rec.journal
    suspended: list[str] = []
    order = WriteOrder(journal, suspended.append, lambda v, r: None,
                       activity=rec.activity if cfg.activity else None)
    hosts = {v: JournaledStore(s, order, v) for v, s in vols.items()}
    sec = secondary.copy()
    done = asyncio.Event()
    wid = [wid0]

    async def writer() -> None:
        for _ in range(cfg.ops):
            v = rng.choice(VOLS)
            kind = rng.random()
            if kind < 0.12:
                s = trace.add("host_flush_start", v)
                await hosts[v].flush()
                life.flushes.append((v, s, trace.add("host_flush_end", v)))
                continue
            length = rng.choice(LENGTHS)
            offset = rng.randrange(0, (VOL_SIZE - length) // BLOCK + 1) * BLOCK
            wid[0] += 1
            zero = kind > 0.93
            w = Write(wid[0], v, offset, bytes(length) if zero else pattern(wid[0], length), kind < 0.3,
                      trace.add("issue", wid[0]))
            life.writes.append(w)
            if zero:
                await hosts[v].write_zeroes(offset, length)
            else:
                await hosts[v].write(offset, w.data, w.fua)
            w.acked = trace.add("ack", w.wid)

    async def secondary_loop() -> None:
        while not done.is_set():
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            if cfg.acquire == "durable":
                await journal.make_durable()
                upto = journal.status()["durable_in"]
                life.durable.append((trace.add("durable", journal.durable_seq), journal.durable_seq))
            else:
                upto = journal.committed_pos
            got = await read_entries(stores["j"], journal.sb, sec.read_pos, sec.read_seq, stop_at=upto)
            if got:
                sec.read_seq, sec.read_pos = got[-1].seq + 1, upto
                life.acquired.append((trace.add("acquired", got[-1].seq), got, sec.read_pos, sec.read_seq))
            if rng.random() < 0.5 and sec.read_seq > journal.ptr.out_seq:
                if cfg.purge_flushes:
                    await order.make_volumes_durable(sec.read_seq)
                async with order.lock:
                    await journal.purge(sec.read_pos, sec.read_seq)
                await persist(trace, "out", (journal.ptr.out_pos, journal.ptr.out_seq))

    try:
        follower = asyncio.ensure_future(secondary_loop())
        await asyncio.gather(*(writer() for _ in range(cfg.writers)))
        done.set()
        await follower
    except Exception as exc:  # noqa: BLE001
        life.error = f"workload failed: {type(exc).__name__}: {exc}"
    if suspended:
        life.error = f"the group suspended (explorer sizing): {suspended[0]}"
    return life


@dataclass(frozen=True)
class CrashState:
    point: int
    mode: str
    salt: int
    new_pointer: bool

    def __str__(self) -> str:
        return f"CrashState(point={self.point}, mode={self.mode!r}, salt={self.salt}, new_pointer={self.new_pointer})"


def images_at(life: Life, cs: CrashState) -> dict[str, bytes]:
    cuts = {n: random.Random(cs.salt * 31 + i).randrange(cs.point + 1) for i, n in enumerate(sorted(life.initial))}

    def keeper(name: str) -> Callable[[int, int], bool]:
        if cs.mode == "all":
            return lambda i, b: True
        if cs.mode == "none":
            return lambda i, b: False
        if cs.mode == "prefix":
            return lambda i, b: i < cuts[name]
        return lambda i, b: hash((cs.salt, i, b)) & 1 == 0

    return {n: bytes(crash_image(life.trace, n, img, cs.point, keeper(n))) for n, img in life.initial.items()}


def secondary_at(life: Life, point: int) -> Secondary:
    sec = life.secondary.copy()
    for idx, got, pos, seq in life.acquired:
        if idx < point:
            sec.entries += got
            sec.read_pos, sec.read_seq = pos, seq
    return sec


def apply(images: dict[int, bytearray], entries: list[Entry]) -> None:
    for e in entries:
        img = images[e.volume]
        img[e.offset : e.offset + e.length] = bytes(e.zero_length) if e.zero_length else e.data


@dataclass
class Checked:
    problems: list[str]
    images: dict[str, bytes]  # the crash state, from which another life may start
    out: tuple[int, int]
    secondary: Secondary
    gap: bool = False  # a later entry lies just past the end of the recovered journal


def gap_after(image: bytes, epoch: int, pos: int, last: int) -> bool:
    """Is there an entry of this journal with a later sequence number than ``last + 1`` in the
    few blocks after ``pos``? (Entries written side by side and a crash between them.)"""
    for p in range(pos, min(pos + 32 * BLOCK, len(image)), BLOCK):
        h = decode_header(image[p : p + BLOCK])
        if h is not None and h.epoch == epoch and h.seq > last + 1:
            return True
    return False


async def check(life: Life, cs: CrashState) -> Checked:
    """Recover one crash state and check the invariants."""
    images = images_at(life, cs)
    out = persisted(life.trace, "out", life.out, cs.point, cs.new_pointer)
    sec = secondary_at(life, cs.point)
    stores = {n: RecordingStore(n, Trace(), img) for n, img in images.items()}
    vols = {v: stores[f"v{v}"] for v in VOLS}
    try:
        rec = await recover_primary(stores["j"], "g", out[0], out[1], vols, extent=AL_EXTENT, slots=AL_SLOTS,
                                    chunk=REJOURNAL_CHUNK)
    except Exception as exc:  # noqa: BLE001
        return Checked([f"recovery failed: {type(exc).__name__}: {exc}"], images, out, sec)
    problems: list[str] = []
    j = rec.journal
    end = rec.tail[-1].lba + rec.tail[-1].span if rec.tail else out[0]
    # 3. what the secondary acquired (and was told was durable) is in the recovered journal
    tail = {e.seq: e for e in rec.tail}
    last = rec.tail[-1].seq if rec.tail else out[1] - 1
    promised = max([s for i, s in life.durable if i < cs.point], default=0)
    if promised > last:
        problems.append(f"durable point {promised} reported, the recovered journal ends at {last}")
    for e in sec.entries:
        if e.seq >= out[1]:
            got = tail.get(e.seq)
            if got is None or (got.volume, got.offset, got.data, got.zero_length) != (
                    e.volume, e.offset, e.data, e.zero_length):
                problems.append(f"entry {e.seq} acquired by the secondary is {'lost' if got is None else 'changed'}")
                break
    # 4. the P-VOLs hold exactly what the secondary will have once it received the journal
    svol = {v: bytearray(VOL_SIZE) for v in VOLS}
    apply(svol, sec.entries)
    rest = await read_entries(j.store, j.sb, j.ptr.out_pos, j.ptr.out_seq, stop_at=j.committed_pos)
    apply(svol, [e for e in rest if e.seq >= sec.read_seq])
    for v in VOLS:
        lost = rec.unjournaled.get(v, set())
        pvol = vols[v].image
        for b in range(VOL_SIZE // BLOCK):
            if (b * BLOCK) // REGION in lost:
                continue
            if pvol[b * BLOCK : (b + 1) * BLOCK] != svol[v][b * BLOCK : (b + 1) * BLOCK]:
                problems.append(f"P-VOL {v} block {b} (wid {_wid(pvol, b)}) differs from what the secondary "
                                f"receives (wid {_wid(svol[v], b)})")
                break
    # 1, 2. acknowledged-durable writes survive; nothing stale comes back
    problems += blocks_legal(life, cs.point, {v: bytes(vols[v].image) for v in VOLS})
    return Checked(problems, images, out, sec, gap_after(images["j"], j.sb.epoch, end, last))


def _wid(image: bytes | bytearray, b: int) -> int:
    return int(struct.unpack_from(">I", image, b * BLOCK)[0])


def blocks_legal(life: Life, point: int, pvols: dict[int, bytes]) -> list[str]:
    problems: list[str] = []
    flushed: dict[int, list[int]] = {}  # volume -> start of host flushes completed before the crash
    for v, s, e in life.flushes:
        if e < point:
            flushed.setdefault(v, []).append(s)
    for v in VOLS:
        writes = [w for w in life.writes if w.volume == v and w.issued < point]
        durable = [w for w in writes if w.acked is not None and w.acked < point
                   and (w.fua or any(s > w.acked for s in flushed.get(v, [])))]
        for b in range(VOL_SIZE // BLOCK):
            here = [w for w in writes if w.offset <= b * BLOCK < w.offset + len(w.data)]
            got = pvols[v][b * BLOCK : (b + 1) * BLOCK]
            legal = {life.start[v][b * BLOCK : (b + 1) * BLOCK]} | {w.block(b) for w in here}
            if got not in legal:
                problems.append(f"P-VOL {v} block {b}: resurrected data never written in this life "
                                f"(wid {struct.unpack('>I', got[:4])[0]}) nor there after the last recovery")
                break
            for d in (w for w in durable if w in here):
                ok = {d.block(b)} | {w.block(b) for w in here if not (w.acked is not None and w.acked < d.issued)}
                if got not in ok:
                    problems.append(f"P-VOL {v} block {b}: write {d.wid}, acknowledged durable, lost")
                    break
    return problems


@dataclass
class Report:
    states: int = 0
    violations: list[str] = field(default_factory=list)


async def explore(seed: int, cfg: Config, report: Report, stop_at_first: bool = False) -> None:
    """All lives of one seed; violations are appended to ``report`` with what replays them."""
    rng = random.Random(seed)
    path: tuple[CrashState, ...] = ()
    starts = [(await fresh_images(), (4096, 1), Secondary(read_pos=4096, read_seq=1), path)]
    for depth in range(cfg.lives):
        nxt = []
        for initial, out, sec, path in starts:
            life = await live(cfg, rng, initial, out, sec, 1000 * (depth + 1))
            if life.error:
                report.violations.append(f"seed {seed} after {list(map(str, path))}: {life.error}")
                continue
            after_writes = [i + 1 for i, ev in enumerate(life.trace.events) if ev[0] == "write" and ev[1] == "j"]
            # every life: right after each of its first journal writes (recovery and the first
            # entries of a new life); then random points, half of them right after a journal
            # write (where entries written side by side leave gaps)
            points = after_writes[:6] if depth else []
            candidates = []
            for n in range(cfg.states[min(depth, len(cfg.states) - 1)]):
                point = points[n] if n < len(points) else rng.choice(after_writes) if after_writes and n % 2 \
                    else rng.randrange(1, len(life.trace) + 1)
                cs = CrashState(point, MODES[n // 2 % len(MODES)] if n >= len(points) else "all",
                                rng.randrange(1 << 30), rng.random() < 0.5)
                got = await check(life, cs)
                report.states += 1
                if got.problems:
                    report.violations.append(f"seed {seed}, crash states {[*map(str, path), str(cs)]}: "
                                             + "; ".join(got.problems[:3]))
                    if stop_at_first:
                        return
                elif cs.mode != "none":
                    candidates.append((not got.gap, n, got, cs))
            for _g, _n, got, cs in sorted(candidates, key=lambda c: c[:2])[: cfg.continued]:
                nxt.append((got.images, got.out, got.secondary, (*path, cs)))  # gaps first
        starts = nxt


def run(seeds: range, cfg: Config, stop_at_first: bool = False) -> Report:
    report = Report()
    for seed in seeds:
        asyncio.run(explore(seed, cfg, report, stop_at_first))
        if stop_at_first and report.violations:
            break
    return report

"""The simulated world of one seed: clock, RNG, trace, the two arrays, the link, and the checker's
view of every host write; the invariants that are checked as things happen live here too.

Hooks into the code under test (process-wide, only while a run is going on, undone afterwards):
``PrimaryJournal.reserve`` and ``WriteOrder._reserve`` are wrapped to record each write's place in
its group's order (journaled, or recorded in the bitmap); both call the original first and change
nothing. Group states are sampled after every event loop step (the only moments another task can
see them).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import random
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..repl.journal import PrimaryJournal, Reservation
from ..repl.model import Group
from ..repl.primary import WriteOrder
from .disk import BLOCK, SimDisk
from .link import NetFaults, SimNet
from .loop import NODE, VirtualClock
from .model import SUB, Era, HostWrite
from .prefix import PrefixWatch
from .states import allowed_transition

if TYPE_CHECKING:
    from .node import SimNode

GROUP = "g1"
#: the host write the current task is executing (for WriteOrder.mark, which gets no data)
HOST_WRITE: contextvars.ContextVar[HostWrite | None] = contextvars.ContextVar("sim_host_write", default=None)


class Ledger:
    """One array's volume as its hosts see it: which writes must have survived a crash."""

    def __init__(self) -> None:
        self.required: dict[int, HostWrite] = {}  # block -> newest write made durable (FUA, flush)
        self.since_boot: dict[int, HostWrite] = {}  # block -> newest write acknowledged since boot
        self.unflushed: list[HostWrite] = []

    @staticmethod
    def _put(table: dict[int, HostWrite], w: HostWrite) -> None:
        for b in range(w.block, w.block + w.nblocks):
            old = table.get(b)
            if old is None or old.submit < w.submit:
                table[b] = w

    def acked(self, w: HostWrite) -> None:
        self._put(self.since_boot, w)
        if w.fua:
            self._put(self.required, w)
        else:
            self.unflushed.append(w)

    def flushed(self, issued: int) -> None:
        keep = []
        for w in self.unflushed:
            if w.end < issued:
                self._put(self.required, w)
            else:
                keep.append(w)
        self.unflushed = keep

    def forget(self) -> None:
        self.required.clear()
        self.since_boot.clear()
        self.unflushed.clear()


class World:
    def __init__(self, seed: int, base_dir: str, faults: NetFaults, trace_len: int = 60) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = VirtualClock()
        self.base_dir = base_dir
        self.events = 0
        self.ring: deque[str] = deque(maxlen=trace_len)
        self.digest = hashlib.blake2b(digest_size=16)
        self.violations: list[tuple[str, str]] = []
        self.writes: dict[int, HostWrite] = {}
        self.eras: dict[tuple[str, int], Era] = {}
        self.net = SimNet(self, faults)
        self.nodes: dict[str, SimNode] = {}
        self.node_ids: dict[str, int] = {}
        self.ledgers: dict[tuple[str, int], Ledger] = {}
        self.last_state: dict[str, tuple[str, str]] = {}
        self.last_fence: dict[str, str] = {}  # the state a FENCED side returns to, as last sampled
        self.licence: dict[str, tuple[str, int]] = {}  # secondary -> (old primary, its incarnation)
        self.redo_until: dict[str, int] = {}
        self._watch: PrefixWatch | None = None
        self._watch_key: Any = None
        self.stats: dict[str, int] = {}

    # --- trace and verdicts ----------------------------------------------------------------------

    def tick(self) -> int:
        self.events += 1
        return self.events

    def trace(self, msg: str) -> None:
        line = f"{self.clock.now:11.6f} {msg}"
        self.ring.append(line)
        self.digest.update(line.encode())

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def violation(self, kind: str, msg: str) -> None:
        if any(k == kind for k, _ in self.violations):
            return
        self.violations.append((kind, msg))
        self.trace(f"VIOLATION {kind}: {msg}")

    # --- hooks into the code under test ----------------------------------------------------------

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        world = self
        reserve, order_reserve = PrimaryJournal.reserve, WriteOrder._reserve

        def reserve_hook(j: PrimaryJournal, *a: Any, **kw: Any) -> Reservation:
            r = reserve(j, *a, **kw)
            world._reserved(j, r)
            return r

        def order_reserve_hook(order: WriteOrder, *a: Any, **kw: Any) -> Any:
            res = order_reserve(order, *a, **kw)
            if (res[0] if isinstance(res, tuple) else res) is None:
                world._unjournaled(order)
            return res

        PrimaryJournal.reserve = reserve_hook  # type: ignore[method-assign,assignment]
        WriteOrder._reserve = order_reserve_hook  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            PrimaryJournal.reserve = reserve  # type: ignore[method-assign]
            WriteOrder._reserve = order_reserve  # type: ignore[method-assign]

    def era(self, node: str, epoch: int) -> Era:
        e = self.eras.get((node, epoch))
        if e is None:
            e = self.eras[(node, epoch)] = Era(node, epoch)
            n = self.nodes.get(node)
            g = self.group(n) if n is not None and n.array is not None else None
            if g is not None and g.role == "primary" and n is not None:
                e.base = {v: n.disks[v].tags() for v in g.pvols() if v in n.disks}
        return e

    def _reserved(self, j: PrimaryJournal, r: Reservation) -> None:
        node = NODE.get()
        if node is None or (len(r.data) < BLOCK and r.zero_length < BLOCK):
            return
        era = self.era(node.name, j.sb.epoch)
        if era.journal is not j:  # a reopened journal: what it did not find is gone
            if era.journal is not None:
                lost = era.truncate(r.seq)
                if lost:
                    self.trace(f"{node.name}: journal reopened at seq {r.seq}; {lost} journaled entries gone")
            era.journal = j
        data = bytes(r.data)
        if r.zero_length:  # a zeroing entry (UNMAP, WRITE SAME of zeros, a hole re-journaled)
            tags = [0] * (r.zero_length // BLOCK)
        else:
            tags = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - BLOCK + 1, BLOCK)]
        era.add(r.seq, r.volume, r.offset // BLOCK, tags)
        w = HOST_WRITE.get()
        if w is not None:
            w.ordered = True

    def _unjournaled(self, order: WriteOrder) -> None:
        node, w = NODE.get(), HOST_WRITE.get()
        if node is None or w is None or w.ordered:
            return
        w.ordered = True
        self.era(node.name, order.journal.sb.epoch).add(None, w.vol, w.block, [w.tag] * w.nblocks)

    def reading_pvol(self, node: str, lun: int) -> None:
        """A copy is about to read a P-VOL: a P-VOL that joined the era after the era began (a
        group's second paircreate) gets its base now, before the copy can take any of its content."""
        arr = self.nodes[node].array
        g = arr.repl.groups.get(GROUP)
        j = arr.repl.journals.get(GROUP)
        if g is not None and g.role == "primary" and j is not None and lun in g.pvols():
            e = self.era(node, j.sb.epoch)
            if lun not in e.base and lun in self.nodes[node].disks:
                e.base[lun] = self.nodes[node].disks[lun].tags()

    def served_read(self, node: str, lun: int) -> None:
        """A copy read a P-VOL: the S-VOL is consistent only once restored past this point."""
        arr = self.nodes[node].array
        g = arr.repl.groups.get(GROUP)
        j = arr.repl.journals.get(GROUP)
        if g is not None and g.role == "primary" and j is not None and lun in g.pvols():
            e = self.era(node, j.sb.epoch)
            e.copy_mark = max(e.copy_mark, e.keys[-1] if e.keys else 0)

    def disk_changed(self, node: str, lun: int, offset: int, length: int) -> None:
        w = self._watch
        if w is not None and self._watch_key is not None and self._watch_key[0] == node:
            for pvol, disk in w.svols.items():
                if disk is self.nodes[node].disks[lun]:
                    w.changed(pvol, offset, length)
                    self.check_prefix()

    def attach(self, node: SimNode) -> None:
        self.nodes[node.name] = node
        self.node_ids[node.name] = len(self.node_ids) + 1
        for lun, disk in node.disks.items():
            disk.watchers.append(functools.partial(self.disk_changed, node.name, lun))

    # --- group state -------------------------------------------------------------------------------

    def group(self, node: SimNode) -> Group | None:
        return node.array.repl.groups.get(GROUP) if node.alive else None

    def observe(self, node: SimNode, role: str, state: str, before_fence: str = "") -> None:
        old = self.last_state.get(node.name, ("", "SMPL"))
        new = (role if state != "SMPL" else "", state)
        old_fence = self.last_fence.get(node.name, "")
        self.last_fence[node.name] = before_fence
        if old == new:
            return
        self.last_state[node.name] = new
        self.trace(f"{node.name}: {old[0] or '-'}/{old[1]} -> {new[0] or '-'}/{new[1]}")
        if not allowed_transition(old, new, old_fence):
            self.violation("state-transition", f"{node.name}: {old[0] or '-'} {old[1]} -> {new[0] or '-'} {new[1]}"
                                               " is no event of the state table (storaged.repl.states)")
        if new[0] == "secondary":  # its volumes now follow the peer: the host-side promises end
            for (name, _lun), ledger in self.ledgers.items():
                if name == node.name:
                    ledger.forget()

    def sample(self) -> None:
        """After every loop step: every state change any task could have seen."""
        for node in self.nodes.values():
            if node.ready:
                g = node.array.repl.groups.get(GROUP)
                self.observe(node, g.role if g else "", g.state if g else "SMPL", g.before_fence if g else "")
                if g is not None and g.role == "secondary" and g.state == "PAIR" and not g.svol_consistent():
                    # the prefix check trusts svol_consistent(): it must never be false in PAIR
                    self.violation("pair-while-inconsistent", f"{node.name} shows PAIR with its S-VOLs inconsistent "
                                                              f"(copy_until_seq {g.copy_until_seq})")

    def booted(self, node: SimNode) -> None:
        """After ``repl.start()``: what the arrays promised their hosts must still be there."""
        g = self.group(node)
        self.last_state[node.name] = ((g.role if g else ""), (g.state if g else "SMPL"))
        self.last_fence[node.name] = g.before_fence if g else ""
        node.ready = True
        arr = node.array
        j = arr.repl.journals.get(GROUP)
        if g is not None and g.role == "primary" and j is not None:
            era = self.era(node.name, j.sb.epoch)
            if era.journal is not j:
                nxt = int(j.status()["next_seq"])
                if era.journal is not None:
                    lost = era.truncate(nxt)
                    if lost:
                        self.trace(f"{node.name}: journal reopened at seq {nxt}; {lost} journaled entries gone")
                era.journal = j
            peer = self.nodes[node.peer]
            pg = peer.array.repl.groups.get(GROUP) if peer.array is not None else None
            nxt = int(j.status()["next_seq"])
            if pg is not None and pg.role == "secondary" and pg.epoch == j.sb.epoch and pg.read_seq > nxt:
                self.violation("secondary-ahead-of-primary",
                               f"{node.name} restarted with its journal at seq {nxt}, but {peer.name} has already "
                               f"acquired up to seq {pg.read_seq - 1}: it holds writes the primary lost")
        if g is not None and g.role == "secondary":
            for (name, _lun), ledger in self.ledgers.items():
                if name == node.name:
                    ledger.forget()
            if g.restored_seq < g.read_seq:
                self.redo_until[node.name] = g.read_seq
        for (name, lun), ledger in self.ledgers.items():
            if name == node.name:
                self.check_durable(node, lun, ledger.required, "lost-durable-write")
                ledger.since_boot.clear()
                ledger.unflushed.clear()
        if g is not None and g.role == "primary" and j is not None:
            # after the checks above (pvol-ahead-of-journal judges the blocks of lost entries first)
            self._reconcile(node, g, self.era(node.name, j.sb.epoch))

    def _reconcile(self, node: SimNode, g: Group, era: Era) -> None:
        """A power cut may undo P-VOL writes that were never made durable (allowed unless FUA or
        flushed: ``check_durable`` judges that). A block the restarted primary holds differently
        from the era's last entry changed at the crash: recorded as an unjournaled change after
        everything before it, which the pair must then carry to the S-VOL (bitmap or redo)."""
        changed = 0
        for vol in g.pvols():
            disk = node.disks.get(vol)
            # blocks with a history, and those a lost entry's truncation left without one
            blocks = set(era.hist.get(vol, {})) | {b for v, b, _t in era.ghosts if v == vol}
            for b in sorted(blocks) if disk is not None else ():
                exp = era.expected(vol, b, 1 << 62)
                t = int.from_bytes(disk.cur[b * BLOCK:b * BLOCK + 8], "little") if disk is not None else 0
                if t != (exp[0] if exp is not None else 0):
                    era.add(None, vol, b, [t])
                    changed += 1
        if changed:
            era.version += 1
            self.trace(f"{node.name}: {changed} P-VOL blocks changed by the crash (unsynced writes undone)")

    def check_durable(self, node: SimNode, lun: int, table: dict[int, HostWrite], kind: str) -> None:
        disk = node.disks[lun]
        for b, req in sorted(table.items()):
            t = int.from_bytes(disk.cur[b * BLOCK:b * BLOCK + 8], "little")
            w = self.writes.get(t)
            if w is not None and (w.end == 0 or w.end >= req.submit):
                continue
            what = "nothing" if w is None else f"write {t} ({'acknowledged' if w.acked else 'never acknowledged'})"
            k = kind if w is None or w.acked else "resurrected-unacked-write"
            self.violation(k, f"{node.name} LUN {lun} block {b}: write {req.tag} ({'FUA' if req.fua else 'acked'},"
                              f" sent at event {req.submit}) is gone; the block holds {what}")
            return
        g = self.group(node)
        j = node.array.repl.journals.get(GROUP) if g is not None and g.role == "primary" else None
        if j is None:
            return
        era = self.era(node.name, j.sb.epoch)
        dirty = set(g.dirty.get(str(lun), [])) if g is not None else set()
        for v, b, t in sorted(era.ghosts):
            if t and v == lun and disk.tags(b * BLOCK, BLOCK)[0] == t and era.first_key(v, b, t) < 0 \
                    and (b * BLOCK) >> 20 not in dirty:
                self.violation("pvol-ahead-of-journal", f"{node.name} LUN {lun} block {b} holds write {t}, whose "
                                                        "journal entry the restart did not find (and no bitmap "
                                                        "region covers it)")
                return

    def ledger(self, node: str, lun: int) -> Ledger:
        led = self.ledgers.get((node, lun))
        if led is None:
            led = self.ledgers[(node, lun)] = Ledger()
        return led

    # --- host-visible checks -------------------------------------------------------------------------

    def protected_svol(self, node: str, vol: int) -> str | None:
        """The state of the secondary group whose S-VOL ``vol`` is on ``node`` when no host write may
        be admitted there now (not SSWS, not split -rw), else None."""
        g = self.group(self.nodes[node])
        if g is None or g.role != "secondary" or vol not in [p.svol for p in g.pairs]:
            return None
        if g.state == "SSWS" or (g.state == "PSUS" and g.writable):
            return None
        return str(g.state)

    def acked(self, w: HostWrite) -> None:
        """A host got GOOD for ``w``: was that array allowed to take it? Admission is what counts: a
        write admitted while its volume was simple may complete after it became an S-VOL (the
        secondary waits for it before any copy; the P == S checks say whether it did)."""
        self.ledger(w.node, w.vol).acked(w)
        me = self.nodes[w.node]
        other = self.nodes[me.peer]
        g, og = self.group(me), self.group(other)
        if g is not None and w.vol not in (g.pvols() if g.role == "primary" else [p.svol for p in g.pairs]):
            g = None  # this LUN is not (yet) in the group
        if og is not None and w.vol not in (og.pvols() if og.role == "primary" else [p.svol for p in og.pairs]):
            og = None
        if w.admitted_as_svol is not None:
            self.violation("svol-accepted-write", f"{me.name} acknowledged write {w.tag} to LUN {w.vol}, admitted "
                                                  f"while its group was secondary in {w.admitted_as_svol}")
            return
        if g is not None and g.role == "secondary" and self.protected_svol(me.name, w.vol) is not None:
            return  # admitted before the volume became an S-VOL: nothing more to judge here
        if g is None or og is None or not other.ready:  # down or starting: no host can write there
            return
        lu = other.array.luns[(other.array.cfg.targets[0].name, w.vol)].lu
        if lu is None or lu.write_protected:
            return
        sec, sg = (me, g) if g.role == "secondary" else (other, og)
        if sg.role == "secondary" and sg.state == "PSUS" and sg.writable:
            return  # split -rw: both sides writable by the user's explicit request
        lic = self.licence.get(sec.name)
        if sg.role == "secondary" and sg.state == "SSWS" and lic is not None:
            old, gen = lic
            if self.nodes[old].gen == gen:
                return  # takeover while the primary was unreachable; not restarted since
            why = f"{old} restarted after the takeover and its P-VOL is writable again (role not confirmed)"
        elif sg.role == "secondary" and sg.state == "SSWS":
            why = "the takeover was not licensed (the primary was reachable)"
        else:
            why = f"{me.name} is {g.role} {g.state}, {other.name} is {og.role} {og.state}"
        self.violation("two-writable-sides", f"{me.name} acknowledged write {w.tag} to LUN {w.vol} while "
                                             f"{other.name}'s LUN {w.vol} is writable too: {why}")

    def check_prefix(self) -> None:
        # only once start-up is done: until then no host can read the S-VOLs, and start-up itself
        # finishes a restore batch a crash interrupted (re-applying it passes through torn states)
        sec = next((n for n in self.nodes.values() if n.alive and n.ready and (g := self.group(n)) is not None
                    and g.role == "secondary"), None)
        g = self.group(sec) if sec is not None else None
        if sec is None or g is None or g.state not in ("PAIR", "PSUE", "PSUS") or g.writable \
                or any(p.state == "COPY" for p in g.pairs):
            self._watch = self._watch_key = None
            return
        era = self.eras.get((g.peer, g.epoch))
        if era is None:
            self._watch = self._watch_key = None
            return
        if not g.svol_consistent():
            self._watch = self._watch_key = None  # the secondary says so (pairdisplay, takeover refuses)
            return
        key = (sec.name, sec.gen, id(g), era, tuple((p.pvol, p.svol) for p in g.pairs))
        if self._watch is None or self._watch_key != key:
            self._watch = PrefixWatch(era, {p.pvol: sec.disks[p.svol] for p in g.pairs})
            self._watch_key = key
        self.count("prefix_checks")
        bad = self._watch.check(claim=g.restored_seq - 1)
        until = self.redo_until.get(sec.name, 0)
        if until and g.restored_seq >= until:
            del self.redo_until[sec.name]
            until = 0
        if not bad:
            return
        if until:
            kind = "svol-not-prefix-after-restart"
        elif (g.restored_seq - 1) << SUB < era.copy_mark:
            kind = "inconsistent-after-copy"
        else:
            kind = "svol-not-prefix"
        (vol, b), why = min(bad.items())
        self.violation(kind, f"{sec.name} S-VOL of P-VOL {vol} block {b} {why} ({len(bad)} blocks wrong; "
                             f"{g.state}, restored_seq {g.restored_seq}, read_seq {g.read_seq})")

    def in_copy(self) -> bool:
        return any(n.ready and (g := n.array.repl.groups.get(GROUP)) is not None and g.state == "COPY"
                   for n in self.nodes.values())

    def grant_licence(self, sec: SimNode, primary: str) -> None:
        self.licence[sec.name] = (primary, self.nodes[primary].gen)

    def svol_disks(self) -> dict[str, SimDisk]:
        return {f"{n.name}:{lun}": d for n in self.nodes.values() for lun, d in n.disks.items()}

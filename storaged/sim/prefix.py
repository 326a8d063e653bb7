"""The S-VOL prefix invariant: the secondary's S-VOLs of a group, taken together, always hold the
P-VOLs' contents after some prefix of the primary's write order.

Checked after every change of an S-VOL disk, incrementally: the prefix P is the highest place in
the era's order any S-VOL block shows; a block is right when it holds the last era write at or
before P that covers it (or, if there is none, no era write at all). Only the blocks that changed
and those whose expected write moves with P are looked at again.
"""

from __future__ import annotations

import heapq
from itertools import repeat

from .disk import BLOCK, SimDisk
from .model import SUB, Era, describe


class PrefixWatch:
    def __init__(self, era: Era, svols: dict[int, SimDisk]) -> None:
        self.era = era
        self.version = era.version
        self.svols = svols  # P-VOL LUN (the era's volume number) -> S-VOL disk
        self.seq: dict[int, list[int]] = {}  # volume -> per block: the prefix its tag implies (-1: none)
        self.count: dict[int, int] = {}
        self.heap: list[int] = []
        self.prefix = -1
        self.bad: dict[tuple[int, int], str] = {}
        self.dirty: set[tuple[int, int]] = set()
        self.full()

    def _tag(self, vol: int, b: int) -> int:
        return int.from_bytes(self.svols[vol].cur[b * BLOCK:b * BLOCK + 8], "little")

    def _set(self, vol: int, b: int, s: int) -> None:
        old = self.seq[vol][b]
        if old == s:
            return
        self.seq[vol][b] = s
        if old >= 0:
            self.count[old] -= 1
        if s >= 0:
            c = self.count.get(s, 0)
            self.count[s] = c + 1
            if c == 0:
                heapq.heappush(self.heap, -s)

    def _max(self) -> int:
        while self.heap and self.count.get(-self.heap[0], 0) <= 0:
            heapq.heappop(self.heap)
        return -self.heap[0] if self.heap else -1

    def full(self) -> None:
        key_of = self.era.key_of
        self.count.clear()
        self.heap.clear()
        self.bad.clear()
        self.dirty.clear()
        for vol, disk in self.svols.items():
            tags = disk.tags()
            keys = list(map(key_of.get, tags, repeat(-1)))
            self.seq[vol] = [-1 if k < 0 else k >> SUB for k in keys]
            for s in self.seq[vol]:
                if s >= 0:
                    self.count[s] = self.count.get(s, 0) + 1
            ghosts = self.era.ghosts.intersection(tags) if self.era.ghosts else ()
            touched = set(self.era.hist.get(vol, {}))
            touched.update(b for b, k in enumerate(keys) if k >= 0)
            if ghosts:
                touched.update(b for b, t in enumerate(tags) if t in ghosts)
            self.dirty.update((vol, b) for b in touched)
        self.heap = [-s for s in self.count if self.count[s] > 0]
        heapq.heapify(self.heap)
        self.prefix = self._max()

    def changed(self, vol: int, offset: int, length: int) -> None:
        if vol not in self.seq:
            return
        key_of = self.era.key_of
        for b in range(offset // BLOCK, (offset + length + BLOCK - 1) // BLOCK):
            k = key_of.get(self._tag(vol, b), -1)
            self._set(vol, b, -1 if k < 0 else k >> SUB)
            self.dirty.add((vol, b))

    def check(self, claim: int = -1) -> dict[tuple[int, int], str]:
        """Re-evaluate what may have changed; returns the blocks that are wrong now. ``claim`` is
        the prefix the secondary says it has restored: the S-VOLs must be at least there."""
        if self.version != self.era.version:
            self.version = self.era.version
            self.full()
        p = max(self._max(), claim)
        if p != self.prefix:
            lo, hi = min(p, self.prefix), max(p, self.prefix)
            for w in self.era.writes_between(lo, hi):
                if w.vol in self.seq:
                    self.dirty.update((w.vol, b) for b in range(w.block, w.block + w.nblocks))
            self.prefix = p
        era = self.era
        for vol, b in self.dirty:
            t = self._tag(vol, b)
            why = ""
            if t in era.ghosts:
                why = f"holds write {t}, which the primary's journal lost in a crash"
            else:
                exp = era.expected(vol, b, p)
                if exp is None:
                    if t in era.key_of:
                        why = f"holds write {t} ({describe(era.key_of[t])}) though no write before prefix {p}"
                elif t != exp:
                    got = f"write {t} ({describe(era.key_of[t])})" if t in era.key_of else f"tag {t} (not of this era)"
                    why = f"holds {got}, prefix {p} needs write {exp} ({describe(era.key_of[exp])})"
            if why:
                self.bad[(vol, b)] = why
            else:
                self.bad.pop((vol, b), None)
        self.dirty.clear()
        return self.bad

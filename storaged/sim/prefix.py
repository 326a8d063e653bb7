"""The S-VOL prefix invariant: the secondary's S-VOLs of a group, taken together, always hold the
P-VOLs' contents after some prefix of the primary's write order.

Checked after every change of an S-VOL disk, incrementally: the prefix P is the highest place in
the era's order (an order key) any S-VOL block shows, or the secondary's restored sequence
number if that is higher; a block is right when it holds the last era entry at or before P that
covers it (or, if there is none, no era entry at all). Only the blocks that changed
and those whose expected write moves with P are looked at again.
"""

from __future__ import annotations

import heapq

from .disk import BLOCK, SimDisk
from .model import SUB, Era, describe


class PrefixWatch:
    def __init__(self, era: Era, svols: dict[int, SimDisk]) -> None:
        self.era = era
        self.version = era.version
        self.svols = svols  # P-VOL LUN (the era's volume number) -> S-VOL disk
        self.seq: dict[int, list[int]] = {}  # volume -> per block: the order key its tag implies (-1: none)
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

    def _key(self, vol: int, b: int, tag: int) -> int:
        return self.era.first_key(vol, b, tag) if tag and not self.era.is_base(vol, b, tag) else -1

    def full(self) -> None:
        self.count.clear()
        self.heap.clear()
        self.bad.clear()
        self.dirty.clear()
        for vol, disk in self.svols.items():
            hv = self.era.hist.get(vol, {})
            self.seq[vol] = seqs = [-1] * (disk.size // BLOCK)
            for b in hv:
                seqs[b] = s = self._key(vol, b, self._tag(vol, b))
                if s >= 0:
                    self.count[s] = self.count.get(s, 0) + 1
            self.dirty.update((vol, b) for b in hv)
            if self.era.ghosts:
                ghost_blocks = {b for v, b, _t in self.era.ghosts if v == vol}
                self.dirty.update((vol, b) for b in ghost_blocks if b < len(seqs))
        self.heap = [-s for s in self.count if self.count[s] > 0]
        heapq.heapify(self.heap)
        self.prefix = self._max()

    def changed(self, vol: int, offset: int, length: int) -> None:
        if vol not in self.seq:
            return
        for b in range(offset // BLOCK, (offset + length + BLOCK - 1) // BLOCK):
            self._set(vol, b, self._key(vol, b, self._tag(vol, b)))
            self.dirty.add((vol, b))

    def check(self, claim: int = -1) -> dict[tuple[int, int], str]:
        """Re-evaluate what may have changed; returns the blocks that are wrong now. ``claim`` is
        the sequence number the secondary says it has restored: the S-VOLs must be at least there."""
        if self.version != self.era.version:
            self.version = self.era.version
            self.full()
        p = max(self._max(), claim << SUB if claim >= 0 else -1)
        while True:
            self._move(p)
            raise_to = self._evaluate(p)
            if raise_to <= p:
                return self.bad
            # a block holds a tag that only a later entry gives it again: the S-VOLs can only be
            # after a prefix that far (forced, so the smallest prefix that could fit); look again
            self.dirty.update(self.bad)
            p = raise_to

    def _move(self, p: int) -> None:
        if p != self.prefix:
            lo, hi = min(p, self.prefix), max(p, self.prefix)
            self.dirty.update(vb for vb in self.era.blocks_between(lo, hi) if vb[0] in self.seq)
            self.prefix = p

    def _evaluate(self, p: int) -> int:
        """Judge the blocks that may have changed against prefix ``p``; returns the prefix some
        wrong block forces (its tag comes back after ``p``), or -1."""
        era = self.era
        raise_to = -1
        for vol, b in self.dirty:
            t = self._tag(vol, b)
            why = ""
            if t and era.ghost(vol, b, t):  # (zeros are also what a never-written block holds)
                why = f"holds write {t}, which the primary's journal lost in a crash"
            else:
                exp = era.expected(vol, b, p)
                if exp is None:
                    # what the block held when the era began (or never written: 0) is right before
                    # the era's first entry for it
                    k = era.first_key(vol, b, t) if t and not era.is_base(vol, b, t) else -1
                    if k >= 0:
                        why = f"holds write {t} ({describe(k)}) though no write up to {describe(p)}"
                elif t != exp[0]:
                    k = era.first_key(vol, b, t)
                    got = f"write {t} ({describe(k)})" if k >= 0 else f"tag {t} (not of this era)"
                    why = f"holds {got}; the prefix up to {describe(p)} needs write {exp[0]} ({describe(exp[1])})"
            if why:
                self.bad[(vol, b)] = why
                raise_to = max(raise_to, era.next_key(vol, b, t, p))
            else:
                self.bad.pop((vol, b), None)
        self.dirty.clear()
        return raise_to

"""What the checker knows: every host write (tagged), and each primary journal's write order.

Every block a host writes starts with the write's tag (8 bytes), so any block on any disk says
which write it came from. An :class:`Era` is one primary journal (an array and a journal epoch):
the order its group's writes took under the write-order lock, recorded as the code reserves
sequence numbers (``PrimaryJournal.reserve``) or, while suspended, marks the bitmap
(``WriteOrder.mark``). Order keys are ``seq << 20`` for journaled writes and ``seq << 20 | k``
for the k-th unjournaled write after sequence number ``seq``.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import dataclass, field

from .disk import BLOCK

SUB = 20
TAG = struct.Struct("=QIIQ")  # tag, node id, volume, lba (the rest of the block: a fill byte)


def describe(key: int) -> str:
    seq, sub = key >> SUB, key & ((1 << SUB) - 1)
    return f"seq {seq}" if not sub else f"unjournaled, after seq {seq}"


@dataclass(slots=True, eq=False)
class HostWrite:
    tag: int
    node: str
    vol: int
    block: int
    nblocks: int
    fua: bool
    submit: int  # event number when the host sent it
    end: int = 0  # event number of the answer, or of the crash that ended it; 0 while in flight
    acked: bool = False
    key: int = -1  # place in its era's order (-1: not journal-ordered)

    def payload(self, node_id: int) -> bytes:
        out = bytearray()
        for k in range(self.nblocks):
            out += TAG.pack(self.tag, node_id, self.vol, self.block + k).ljust(BLOCK, bytes([self.tag % 251]))
        return bytes(out)


@dataclass(slots=True)
class _Hist:
    keys: list[int] = field(default_factory=list)
    tags: list[int] = field(default_factory=list)


class Era:
    """One primary journal's order of writes (volume = the P-VOL LUN)."""

    def __init__(self, node: str, epoch: int) -> None:
        self.node = node
        self.epoch = epoch
        self.order: list[HostWrite] = []
        self.keys: list[int] = []
        self.key_of: dict[int, int] = {}  # tag -> order key
        self.hist: dict[int, dict[int, _Hist]] = {}  # volume -> block -> history
        self.max_seq = 0
        self.sub = 0
        self.ghosts: set[int] = set()  # tags of journaled writes the journal lost in a crash
        self.copy_mark = 0  # the order key current when a copy last read a P-VOL
        self.version = 0  # bumped when history is rewritten (a crash truncated it)

    def add(self, w: HostWrite, seq: int | None) -> None:
        if seq is None:
            self.sub += 1
            key = (self.max_seq << SUB) | self.sub
        else:
            self.max_seq = max(self.max_seq, seq)
            self.sub = 0
            key = seq << SUB
        self._insert(w, key)

    def _insert(self, w: HostWrite, key: int) -> None:
        w.key = key
        i = bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.order.insert(i, w)
        self.key_of[w.tag] = key
        vol = self.hist.setdefault(w.vol, {})
        for b in range(w.block, w.block + w.nblocks):
            h = vol.get(b)
            if h is None:
                h = vol[b] = _Hist()
            j = bisect_left(h.keys, key)
            h.keys.insert(j, key)
            h.tags.insert(j, w.tag)

    def _remove(self, w: HostWrite) -> None:
        i = bisect_left(self.keys, w.key)
        del self.keys[i], self.order[i]
        self.key_of.pop(w.tag, None)
        vol = self.hist[w.vol]
        for b in range(w.block, w.block + w.nblocks):
            h = vol[b]
            j = h.tags.index(w.tag)
            del h.keys[j], h.tags[j]
            if not h.keys:
                del vol[b]

    def truncate(self, next_seq: int) -> list[HostWrite]:
        """After a restart the journal holds entries below ``next_seq`` only: later journaled
        writes are gone (ghosts); later unjournaled ones move to just after ``next_seq - 1``."""
        start = bisect_left(self.keys, next_seq << SUB)
        tail = self.order[start:]
        if not tail:
            self.max_seq = min(self.max_seq, next_seq - 1)
            return []
        for w in tail:
            self._remove(w)
        self.max_seq = next_seq - 1
        self.sub = self.keys[-1] & ((1 << SUB) - 1) if self.keys and self.keys[-1] >> SUB == self.max_seq else 0
        lost = []
        for w in tail:
            if w.key & ((1 << SUB) - 1):
                self.add(w, None)
            else:
                self.ghosts.add(w.tag)
                w.key = -1
                lost.append(w)
        self.version += 1
        return lost

    def expected(self, vol: int, block: int, prefix: int) -> int | None:
        """The tag block ``block`` holds after the writes up to ``prefix``; None: no era write."""
        h = self.hist.get(vol, {}).get(block)
        if h is None:
            return None
        i = bisect_left(h.keys, (prefix + 1) << SUB)
        return h.tags[i - 1] if i else None

    def writes_between(self, lo: int, hi: int) -> list[HostWrite]:
        """Era writes with lo < seq <= hi (their blocks change meaning when the prefix moves)."""
        return self.order[bisect_left(self.keys, (lo + 1) << SUB):bisect_left(self.keys, (hi + 1) << SUB)]

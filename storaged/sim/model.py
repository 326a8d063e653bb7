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
from bisect import bisect_left, bisect_right
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
    ordered: bool = False  # its place in a journal group's order is recorded
    #: the group state when the array admitted it, if its volume was then a protected S-VOL
    admitted_as_svol: str | None = None

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
    """One primary journal's order of block contents (volume = the P-VOL LUN).

    An entry is (key, volume, first block, the tag of each block): a host write, or a chunk of
    P-VOL content the primary re-journals after an unclean stop (many tags)."""

    def __init__(self, node: str, epoch: int) -> None:
        self.node = node
        self.epoch = epoch
        self.entries: list[tuple[int, int, int, list[int]]] = []  # ascending key
        self.keys: list[int] = []
        self.hist: dict[int, dict[int, _Hist]] = {}  # volume -> block -> history
        self.max_seq = 0
        self.sub = 0
        self.ghosts: set[tuple[int, int, int]] = set()  # (volume, block, tag) of entries a crash lost
        self.copy_mark = 0  # the order key current when a copy last read a P-VOL
        self.version = 0  # bumped when history is rewritten (a crash truncated it)
        self.journal: object = None  # the journal object whose reservations are recorded now
        #: each P-VOL's block tags when the era began: a block still holding what it held then
        #: says nothing about how far the S-VOLs are (a later entry may write the same tag again)
        self.base: dict[int, list[int]] = {}

    def add(self, seq: int | None, vol: int, block: int, tags: list[int]) -> None:
        if seq is None:
            self.sub += 1
            key = (self.max_seq << SUB) | self.sub
        else:
            self.max_seq = max(self.max_seq, seq)
            self.sub = 0
            key = seq << SUB
        self._insert(key, vol, block, tags)

    def _insert(self, key: int, vol: int, block: int, tags: list[int]) -> None:
        i = bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.entries.insert(i, (key, vol, block, tags))
        hv = self.hist.setdefault(vol, {})
        for k, t in enumerate(tags):
            h = hv.get(block + k)
            if h is None:
                h = hv[block + k] = _Hist()
            j = bisect_left(h.keys, key)
            h.keys.insert(j, key)
            h.tags.insert(j, t)

    def truncate(self, next_seq: int) -> int:
        """After a restart the journal holds entries below ``next_seq`` only: later journaled
        entries are gone (ghosts); later unjournaled writes move to just after ``next_seq - 1``.
        Returns how many entries were lost."""
        start = bisect_left(self.keys, next_seq << SUB)
        tail = self.entries[start:]
        del self.entries[start:], self.keys[start:]
        for vol, hv in self.hist.items():
            for b in [b for b, h in hv.items() if h.keys and h.keys[-1] >= next_seq << SUB]:
                h = hv[b]
                j = bisect_left(h.keys, next_seq << SUB)
                del h.keys[j:], h.tags[j:]
                if not h.keys:
                    del hv[b]
        self.max_seq = next_seq - 1
        last = self.keys[-1] if self.keys else 0
        self.sub = last & ((1 << SUB) - 1) if last >> SUB == self.max_seq else 0
        lost = 0
        for key, vol, block, tags in tail:
            if key & ((1 << SUB) - 1):
                self.add(None, vol, block, tags)
            else:
                self.ghosts.update((vol, block + k, t) for k, t in enumerate(tags))
                lost += 1
        if tail:
            self.version += 1
        return lost

    def is_base(self, vol: int, block: int, tag: int) -> bool:
        base = self.base.get(vol)
        return base is not None and block < len(base) and base[block] == tag

    def first_key(self, vol: int, block: int, tag: int) -> int:
        """The earliest place in the order where ``block`` got ``tag``; -1 if it never did."""
        h = self.hist.get(vol, {}).get(block)
        if h is not None:
            for k, t in zip(h.keys, h.tags, strict=True):
                if t == tag:
                    return k
        return -1

    def next_key(self, vol: int, block: int, tag: int, after: int) -> int:
        """The first place after ``after`` where ``block`` gets ``tag`` again (a re-journaled chunk
        of P-VOL content can bring back an older tag, or zeros); -1 if it never does."""
        h = self.hist.get(vol, {}).get(block)
        if h is not None:
            for j in range(bisect_right(h.keys, after), len(h.keys)):
                if h.tags[j] == tag:
                    return h.keys[j]
        return -1

    def expected(self, vol: int, block: int, prefix: int) -> tuple[int, int] | None:
        """(tag, key) block ``block`` holds after the entries up to order key ``prefix``; None: no entry."""
        h = self.hist.get(vol, {}).get(block)
        if h is None:
            return None
        i = bisect_right(h.keys, prefix)
        return (h.tags[i - 1], h.keys[i - 1]) if i else None

    def ghost(self, vol: int, block: int, tag: int) -> bool:
        return (vol, block, tag) in self.ghosts and self.first_key(vol, block, tag) < 0

    def blocks_between(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """(volume, block) of entries with lo < key <= hi (their meaning moves with the prefix)."""
        a, b = bisect_right(self.keys, lo), bisect_right(self.keys, hi)
        return [(vol, block + k) for _key, vol, block, tags in self.entries[a:b] for k in range(len(tags))]

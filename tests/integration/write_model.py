"""What concurrent hosts did to a journal group, and whether a volume state could have come from it.

With several writes in flight the hosts know only a partial order: the array gives each write a
journal sequence number under the group's lock, so of two writes in flight at the same time either
may come first, but a write acknowledged (GOOD) before another was *issued* has the smaller number.
Every write carries a unique tag in each of its blocks, so a volume state says, block by block,
which write put it there. ``check_state`` decides whether some order of the writes that respects
the real-time order, applied up to some point, gives exactly that state (see its docstring).

Times are ticks of one counter in the single-threaded test process: a write's issue tick is taken
before its command is sent and its ack tick after GOOD is received, so "ack(a) < issue(b)" really
means the array answered ``a`` before it saw ``b`` (never claimed when it is not true).
"""

from __future__ import annotations

import itertools
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

BLOCK = 512
_ZERO = bytes(BLOCK)


@dataclass(slots=True)
class Write:
    """One WRITE command as the host saw it."""

    index: int  # the tag in its blocks, from 1
    volume: int
    lba: int
    blocks: int
    issued: int
    acked: int | None = None  # tick GOOD arrived: it is in the journal, ordered before later issues
    refused: bool = False  # any other status: the array did not apply it, it must never show
    settled: int | None = None  # the array died with it in flight: if applied at all, then before this tick

    @property
    def done(self) -> int | None:
        """The tick after which every newly issued write follows this one (if it was applied)."""
        return self.acked if self.acked is not None else self.settled

    def describe(self) -> str:
        state = (f"acked@{self.acked}" if self.acked is not None else "refused" if self.refused
                 else f"lost@{self.settled}" if self.settled is not None else "in flight")
        return f"write {self.index} (LUN {self.volume} LBA {self.lba}+{self.blocks}, issued@{self.issued}, {state})"


@dataclass
class Model:
    """Every write issued, in issue order; ``writes[i - 1]`` has tag ``i``."""

    writes: list[Write] = field(default_factory=list)
    _clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def tick(self) -> int:
        return next(self._clock)

    def issue(self, volume: int, lba: int, blocks: int) -> Write:
        w = Write(len(self.writes) + 1, volume, lba, blocks, self.tick())
        self.writes.append(w)
        return w

    def ack(self, w: Write) -> None:
        w.acked = self.tick()

    def refuse(self, w: Write) -> None:
        w.refused = True

    def lose(self, w: Write) -> None:
        """The connection died with ``w`` in flight (the array was killed): outcome unknown."""
        w.settled = self.tick()

    def count(self, what: str) -> int:
        pick = {"acked": lambda w: w.acked is not None, "refused": lambda w: w.refused,
                "lost": lambda w: w.settled is not None}[what]
        return sum(1 for w in self.writes if pick(w))


def block_bytes(index: int, volume: int, lba: int) -> bytes:
    return struct.pack(">QIQ", index, volume, lba).ljust(BLOCK, bytes([index % 251]))


def payload(w: Write) -> bytes:
    return b"".join(block_bytes(w.index, w.volume, w.lba + k) for k in range(w.blocks))


class OrderViolation(AssertionError):
    """The state cannot be the result of applying, in a real-time-respecting order, a prefix of the writes."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    visible: int  # writes showing in at least one block
    required: int  # writes that must have been applied (visible, or acknowledged before one was issued)
    reordered: int  # block overwrites where the later write (by journal order) was issued first


def tags(model: Model, volume: int, raw: bytes) -> list[int]:
    """The write each block of ``raw`` came from (0: never written); raises on bytes no write put there."""
    out = [0] * (len(raw) // BLOCK)
    for blk in range(len(out)):
        data = raw[blk * BLOCK : (blk + 1) * BLOCK]
        if data == _ZERO:
            continue
        index = struct.unpack_from(">Q", data)[0]
        w = model.writes[index - 1] if 0 < index <= len(model.writes) else None
        if w is None or w.volume != volume or not w.lba <= blk < w.lba + w.blocks \
                or data != block_bytes(index, volume, blk):
            raise OrderViolation(f"LUN {volume} block {blk} holds bytes no write put there "
                                 f"(tag {index}: {w.describe() if w else 'no such write'}; torn or misplaced)")
        if w.refused:
            raise OrderViolation(f"LUN {volume} block {blk} shows {w.describe()}: the array refused it")
        out[blk] = index
    return out


def check_state(model: Model, volumes: dict[int, bytes], *, complete: bool) -> CheckResult:
    """Raise OrderViolation unless ``volumes`` (LUN -> its first bytes) is a state the group may pass through.

    The array applies writes in journal order T, which extends the real-time order "hb":
    ``a hb b`` when ``a`` was acknowledged (or, lost in a crash, settled) before ``b`` was issued. A
    consistent state is T applied up to some point P. So:

    1. every non-zero block must be exactly the bytes of one write that covers it and was not
       refused; the writes that show somewhere are V;
    2. P must contain V and everything acknowledged before some write of V was issued (hb is an
       interval order, so one step closes it); with ``complete`` (nothing may be lost: after a
       drain, or on a restarted primary) P must contain every acknowledged write. That minimal P
       is D; a larger P only adds constraints, so deciding D decides the question;
    3. for every block each write of D covering it must come, in T, before the write the block
       shows (and a zero block must be covered by no write of D);
    4. those "comes before" pairs and hb together must have no cycle: then a topological order is
       a T giving exactly this state; a cycle means none does.

    hb can hold O(n^2) pairs; it is encoded with a chain of time nodes (one per issue tick of D,
    in order): ``a -> first time node issued after a.done``, ``time k -> time k+1`` and
    ``time k -> the write issued at k``, so ``a`` reaches ``b`` exactly when b.issued > a.done.
    """
    shown = {vol: tags(model, vol, raw) for vol, raw in volumes.items()}
    visible = {i for t in shown.values() for i in t if i}
    if complete:
        required = visible | {w.index for w in model.writes if w.acked is not None}
    else:
        horizon = max((model.writes[i - 1].issued for i in visible), default=0)
        required = visible | {w.index for w in model.writes if w.acked is not None and w.acked < horizon}
    edges: dict[int, dict[int, str]] = {}  # node -> successor -> why; writes > 0, time nodes < 0
    reordered = 0
    for i in sorted(required):
        w = model.writes[i - 1]
        if w.volume not in shown:
            continue
        t = shown[w.volume]
        for blk in range(w.lba, min(w.lba + w.blocks, len(t))):
            top = t[blk]
            if top == 0:
                raise OrderViolation(
                    f"LUN {w.volume} block {blk} was never written, yet {w.describe()} must have been applied "
                    f"({'nothing acknowledged may be lost' if complete else 'it was acknowledged before a visible write was issued'})")
            if top != i:
                reordered += top < i
                edges.setdefault(i, {})[top] = f"LUN {w.volume} block {blk} shows {top} over {i}"
    order = sorted(required, key=lambda i: model.writes[i - 1].issued)
    issued = [model.writes[i - 1].issued for i in order]
    for k, i in enumerate(order):
        edges.setdefault(-(k + 1), {})[i] = "issued"
        if k + 1 < len(order):
            edges[-(k + 1)][-(k + 2)] = "later"
        done = model.writes[i - 1].done
        if done is not None:
            nxt = bisect_right(issued, done)
            if nxt < len(order):
                edges.setdefault(i, {})[-(nxt + 1)] = "acknowledged before the issue of"
    cycle = _find_cycle(edges)
    if cycle:
        raise OrderViolation("no order respecting the acknowledgements gives this state: "
                             + _explain(model, cycle, edges))
    return CheckResult(len(visible), len(required), reordered)


def _find_cycle(edges: dict[int, dict[int, str]]) -> list[int]:
    """A cycle of the graph as a node list (first node repeated at the end), or [] (iterative DFS)."""
    colour: dict[int, int] = {}  # 1 on the stack, 2 finished
    for root in edges:
        if colour.get(root):
            continue
        stack: list[tuple[int, list[int]]] = [(root, list(edges.get(root, {})))]
        colour[root] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                continue
            nxt = todo.pop()
            c = colour.get(nxt, 0)
            if c == 1:
                path = [n for n, _ in stack]
                return path[path.index(nxt):] + [nxt]
            if c == 0:
                colour[nxt] = 1
                stack.append((nxt, list(edges.get(nxt, {}))))
    return []


def _explain(model: Model, cycle: list[int], edges: dict[int, dict[int, str]]) -> str:
    """The cycle with the time nodes folded into "acknowledged before the issue of" steps."""
    start = next(k for k, n in enumerate(cycle) if n > 0)  # the time chain alone is acyclic
    cycle = cycle[start:-1] + cycle[:start + 1]
    parts: list[str] = []
    for a, b in itertools.pairwise(cycle):
        if a > 0:
            parts.append(model.writes[a - 1].describe())
            parts.append(f"--[{edges[a][b]}]-->")
    parts.append(model.writes[cycle[0] - 1].describe())
    return " ".join(parts)

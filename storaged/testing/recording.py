"""A recording layer for crash-state exploration (after CrashMonkey and ALICE).

:class:`RecordingStore` is a :class:`~storaged.backstore.base.Backstore` over an in-memory image
that logs every write and every flush (start and end) into a shared :class:`Trace`, together
with whatever the workload notes there (acknowledgements, pointers it persisted). Writes may be
made to yield first, so concurrent writers complete in varied orders.

:func:`crash_image` rebuilds what one store holds after a crash at a point of the trace: every
write issued before the start of a flush that completed by then is durable; every later write
is kept or lost per block (``keep`` decides), so reordering caches and torn multi-block writes
both appear. :func:`persisted` does the same for small tables persisted atomically (temp file,
fsync, rename, directory fsync): the old or the new version while one is being written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..backstore.base import Backstore, Extent

BLOCK = 512  # the unit a crash keeps or loses: a sector


@dataclass
class Trace:
    """Everything that happened, in order: ``(kind, *details)`` tuples."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    yield_chance: float = 0.0  # a write yields to the loop first with this chance

    def add(self, kind: str, *details: Any) -> int:
        self.events.append((kind, *details))
        return len(self.events) - 1

    def __len__(self) -> int:
        return len(self.events)


class RecordingStore(Backstore):
    """An in-memory store whose writes and flushes go into a trace."""

    def __init__(self, name: str, trace: Trace, image: bytes | bytearray, thin: bool = False) -> None:
        self.name = name
        self.trace = trace
        self.image = bytearray(image)
        self.size = len(image)
        self.thin = thin

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.image[offset : offset + length])

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        if self.trace.yield_chance and self.trace.rng.random() < self.trace.yield_chance:
            await asyncio.sleep(0)
        raw = bytes(data)
        self.image[offset : offset + len(raw)] = raw
        self.trace.add("write", self.name, offset, raw)
        if fua:
            await self.flush()

    async def writev(self, offset: int, buffers: list[bytes | bytearray | memoryview], fua: bool = False) -> None:
        await self.write(offset, b"".join(bytes(b) for b in buffers), fua)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))

    async def unmap(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))

    async def flush(self) -> None:
        start = self.trace.add("flush_start", self.name)
        await asyncio.sleep(0)  # writes issued meanwhile may or may not be covered
        self.trace.add("flush_end", self.name, start)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]


def durable_before(trace: Trace, name: str, point: int) -> int:
    """Trace index before which every write to ``name`` is durable at a crash at ``point``."""
    best = 0
    for i in range(min(point, len(trace.events))):
        ev = trace.events[i]
        if ev[0] == "flush_end" and ev[1] == name:
            best = max(best, ev[2])
    return best


def crash_image(trace: Trace, name: str, initial: bytes | bytearray, point: int,
                keep: Callable[[int, int], bool]) -> bytearray:
    """The store's content after a crash at trace index ``point``: durable writes whole, the
    others block by block where ``keep(trace index, block number)`` says so, in issue order."""
    image = bytearray(initial)
    durable = durable_before(trace, name, point)
    for i in range(min(point, len(trace.events))):
        ev = trace.events[i]
        if ev[0] != "write" or ev[1] != name:
            continue
        offset, data = ev[2], ev[3]
        if i < durable:
            image[offset : offset + len(data)] = data
            continue
        pos = offset
        while pos < offset + len(data):
            nxt = min((pos // BLOCK + 1) * BLOCK, offset + len(data))
            if keep(i, pos // BLOCK):
                image[pos:nxt] = data[pos - offset : nxt - offset]
            pos = nxt
    return image


def persisted(trace: Trace, name: str, initial: Any, point: int, choose_new: bool) -> Any:
    """The value of an atomically persisted table at a crash at ``point``: the last one whose
    write completed (``persist_end``), or, while a newer one was being written
    (``persist_start``), that one if ``choose_new``."""
    value, started = initial, None
    for i in range(min(point, len(trace.events))):
        ev = trace.events[i]
        if ev[0] == "persist_start" and ev[1] == name:
            started = ev[2]
        elif ev[0] == "persist_end" and ev[1] == name:
            value, started = ev[2], None
    return started if started is not None and choose_new else value


async def persist(trace: Trace, name: str, value: Any) -> None:
    """Note an atomic persist of ``value`` (as persist.atomic_write does it) in the trace."""
    trace.add("persist_start", name, value)
    await asyncio.sleep(0)
    trace.add("persist_end", name, value)

"""Sans-IO fault scheduler for one direction of one proxied connection.

The pump hands it chunks as they are read (:meth:`Scheduler.push`) and asks what may be written
now (:meth:`Scheduler.pop`) and when to ask again (:meth:`Scheduler.next_wakeup`). Time is always
passed in and faults are read from the :class:`LinkFaults` given to each call, so it runs the same
under a fake clock in unit tests as under the event loop.

* **Latency** (delay, jitter, loss penalty) is decided when a chunk arrives: its release time is
  ``max(now + latency, release time of the previous chunk)``, so bytes never overtake each other.
* **Stall** is decided when releasing: nothing is released while set; chunks whose time has come
  go out as soon as it is cleared, in order.
* **Bandwidth** is a token bucket applied when releasing: a chunk goes out in pieces of at most
  ``burst`` bytes, each once the bucket holds enough tokens for it.
* **drop_after_bytes**: at most that many bytes are released; :attr:`Scheduler.broken` is then
  set and the pump resets the connection.
"""

from __future__ import annotations

import math
import random
from collections import deque

from .faults import LinkFaults

_EPS = 1e-9  # float slack, so a wakeup computed from the token rate releases at that time


class Scheduler:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self._queue: deque[tuple[float, memoryview]] = deque()  # (release time, bytes), FIFO
        self._last_release = -math.inf
        self._tokens: float | None = None  # None: no bandwidth limit in effect
        self._refilled = 0.0
        self._eof = False
        self.queued_bytes = 0
        self.received = 0  # bytes pushed
        self.released = 0  # bytes popped
        self.penalties = 0  # chunks that drew a loss penalty
        self.broken = False

    # -- input -----------------------------------------------------------------------------------

    def push(self, data: bytes, now: float, faults: LinkFaults) -> float:
        """Queue a chunk read at ``now``; returns the earliest time it may be released."""
        if self._eof:
            raise ValueError("push after eof")
        latency = faults.delay
        if faults.jitter:
            latency += self.rng.uniform(0.0, faults.jitter)
        if faults.loss and self.rng.random() < faults.loss:
            latency += faults.loss_penalty
            self.penalties += 1
        release = max(now + latency, self._last_release)
        self._last_release = release
        if data:
            self._queue.append((release, memoryview(bytes(data))))
            self.queued_bytes += len(data)
            self.received += len(data)
        return release

    def eof(self) -> None:
        """The source has no more bytes; :attr:`finished` once the queue has drained."""
        self._eof = True

    # -- output ----------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._eof and not self._queue

    def pop(self, now: float, faults: LinkFaults) -> bytes:
        """The bytes that may be forwarded at ``now`` (``b""`` if none), in order."""
        limit = faults.drop_after_bytes
        if limit is not None and self.released >= limit:
            self.broken = True
        if self.broken or faults.stall or not self._queue:
            return b""
        release, view = self._queue[0]
        if release > now + _EPS:
            return b""
        n = len(view)
        if limit is not None:
            n = min(n, int(limit) - self.released)
        if faults.bandwidth is None:
            self._tokens = None
        else:
            self._refill(now, faults)
            assert self._tokens is not None
            if self._tokens + _EPS < min(n, faults.burst_bytes()):
                return b""
            n = min(n, max(1, int(self._tokens + _EPS)))
            self._tokens -= n
        out = bytes(view[:n])
        if n == len(view):
            self._queue.popleft()
        else:
            self._queue[0] = (release, view[n:])
        self.queued_bytes -= n
        self.released += n
        if limit is not None and self.released >= limit:
            self.broken = True
        return out

    def next_wakeup(self, now: float, faults: LinkFaults) -> float | None:
        """When :meth:`pop` will next have something, if nothing else changes; None if it waits on
        something else (an empty queue, a stall, a broken connection)."""
        if self.broken or faults.stall or not self._queue:
            return None
        release, view = self._queue[0]
        when = release
        if faults.bandwidth is not None:
            need = min(len(view), faults.burst_bytes())
            if faults.drop_after_bytes is not None:
                need = min(need, max(1, int(faults.drop_after_bytes) - self.released))
            if self._tokens is not None:
                when = max(when, self._refilled + (need - self._tokens) / faults.bandwidth)
        return max(when, now)

    def _refill(self, now: float, faults: LinkFaults) -> None:
        assert faults.bandwidth is not None
        burst = faults.burst_bytes()
        if self._tokens is None:
            self._tokens = burst  # a new limit starts with a full bucket
        elif now > self._refilled:
            self._tokens += (now - self._refilled) * faults.bandwidth
        self._tokens = min(self._tokens, burst)
        self._refilled = max(self._refilled, now)

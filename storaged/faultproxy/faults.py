"""What the fault proxy does to the bytes it forwards: plain, runtime-mutable dataclasses.

A :class:`Faults` holds one :class:`LinkFaults` per direction (``c2s``: client to server, ``s2c``:
server to client) plus the connection-level ``refuse`` switch. The proxy re-reads them for every
chunk it forwards, so assigning an attribute changes a running proxy's behaviour at once::

    proxy.faults.c2s.delay = 0.05          # one direction
    proxy.faults.set(stall=True)           # both directions
    proxy.faults.set("s2c", bandwidth=1 << 20, stall=False)

Values are checked on every assignment (a negative delay or a loss outside [0, 1] raises
``ValueError``), so a typo in a test fails where it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Direction = Literal["c2s", "s2c"]
DirectionOrBoth = Literal["c2s", "s2c", "both"]
DIRECTIONS: tuple[Direction, Direction] = ("c2s", "s2c")

#: Default token-bucket depth, in seconds of bandwidth (see ``LinkFaults.burst``).
BURST_SECONDS = 0.02


def _check(name: str, value: Any) -> None:
    if name in ("delay", "jitter", "loss_penalty"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    elif name == "loss":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"loss must be a probability in [0, 1], not {value!r}")
    elif name in ("bandwidth", "burst", "drop_after_bytes"):
        if value is None:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be None or a number >= 0, not {value!r}")
        if name in ("bandwidth", "burst") and value == 0:
            raise ValueError(f"{name} must be None (unlimited) or > 0, not 0")
        if name == "drop_after_bytes" and value != int(value):
            raise ValueError(f"drop_after_bytes must be a whole number of bytes, not {value!r}")
    elif name == "stall":
        if not isinstance(value, bool):
            raise ValueError(f"stall must be a bool, not {value!r}")


@dataclass
class LinkFaults:
    """Faults applied to one direction of every connection through the proxy."""

    delay: float = 0.0
    """Seconds added to every chunk, from when the proxy reads it to when it may be forwarded."""
    jitter: float = 0.0
    """Extra random delay per chunk, uniform in [0, jitter]. Byte order is always preserved: a
    chunk is never released before the one read before it."""
    bandwidth: float | None = None
    """Bytes per second (token bucket); None = unlimited."""
    burst: int | None = None
    """Token-bucket depth in bytes (the most released at once); None = ``BURST_SECONDS`` of bandwidth."""
    loss: float = 0.0
    """Probability per chunk of a retransmission-like extra delay of ``loss_penalty`` (TCP turns
    packet loss into latency and head-of-line blocking; the bytes themselves are never lost)."""
    loss_penalty: float = 0.2
    stall: bool = False
    """Hold every byte (connections stay open, nothing is forwarded) until cleared."""
    drop_after_bytes: int | None = None
    """Reset a connection once it has forwarded this many bytes in this direction; None = never."""

    def __setattr__(self, name: str, value: Any) -> None:
        _check(name, value)
        object.__setattr__(self, name, value)

    def update(self, **changes: Any) -> None:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            _check(name, value)  # all or nothing
        for name, value in changes.items():
            setattr(self, name, value)

    def burst_bytes(self) -> float:
        """The token-bucket depth in effect (only meaningful with a bandwidth limit)."""
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, (self.bandwidth or 0) * BURST_SECONDS)

    def describe(self) -> str:
        parts = [f"delay={self.delay:g}", f"jitter={self.jitter:g}",
                 f"bandwidth={'off' if self.bandwidth is None else f'{self.bandwidth:.0f}'}",
                 f"loss={self.loss:g}", f"loss_penalty={self.loss_penalty:g}",
                 f"stall={'on' if self.stall else 'off'}",
                 f"drop_after={'off' if self.drop_after_bytes is None else self.drop_after_bytes}"]
        return " ".join(parts)


@dataclass
class Faults:
    """Both directions' faults and the connection-level switches of one proxy."""

    c2s: LinkFaults = field(default_factory=LinkFaults)
    s2c: LinkFaults = field(default_factory=LinkFaults)
    refuse: bool = False
    """While set, new connections are accepted and reset at once (existing ones are untouched)."""

    @classmethod
    def symmetric(cls, *, refuse: bool = False, **link: Any) -> Faults:
        """The same ``LinkFaults`` in both directions, e.g. ``Faults.symmetric(delay=0.05)``."""
        return cls(LinkFaults(**link), LinkFaults(**link), refuse)

    def direction(self, direction: Direction) -> LinkFaults:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be c2s or s2c, not {direction!r}")
        return self.c2s if direction == "c2s" else self.s2c

    def set(self, direction: DirectionOrBoth = "both", **changes: Any) -> None:
        """Change faults in one direction or both, e.g. ``faults.set(stall=True)``."""
        if direction not in ("c2s", "s2c", "both"):
            raise ValueError(f"direction must be c2s, s2c or both, not {direction!r}")
        targets = DIRECTIONS if direction == "both" else (direction,)
        for d in targets:
            self.direction(d).update(**changes)

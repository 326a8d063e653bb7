"""Per-LUN I/O counters kept on the hot path: plain ints and a fixed-bucket latency histogram.

Every READ and WRITE passes through :meth:`LunIoStats.done` (called by the logical unit's gate),
so it must cost next to nothing: no lock (one event loop thread updates it), no allocation beyond
Python's own int results, one ``bisect`` for the histogram bucket. The Prometheus collector reads
these numbers at scrape time; nothing here imports prometheus_client.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..scsi.types import ScsiCommand, ScsiResult

#: histogram bucket upper bounds in nanoseconds (Prometheus ``le``, inclusive), +Inf is implicit
BOUNDS_NS: Final[tuple[int, ...]] = (
    25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
    100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000, 10_000_000_000,
)
#: the same bounds in seconds, as the exposition labels them
BOUNDS_S: Final[tuple[float, ...]] = tuple(b / 1e9 for b in BOUNDS_NS)

READ: Final = 1
WRITE: Final = 2
#: COMPARE AND WRITE: its Data-Out holds the compare half and the write half
CAW: Final = 3


def _kinds() -> tuple[int, ...]:
    table = [0] * 256
    for op in (0x08, 0x28, 0xA8, 0x88):  # READ(6/10/12/16)
        table[op] = READ
    # WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16), ORWRITE(16), WRITE ATOMIC(16)
    for op in (0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x8B, 0x9C):
        table[op] = WRITE
    table[0x89] = CAW
    return tuple(table)


#: opcode -> READ, WRITE, CAW or 0 (not counted: control commands, WRITE SAME, UNMAP)
IO_KIND: Final[tuple[int, ...]] = _kinds()


class LunIoStats:
    """Commands, bytes and latency of one LU's reads and writes since it was opened.

    An op is counted whatever its outcome (GOOD, CHECK CONDITION, aborted); bytes only for GOOD
    ones. Latency is the time inside the LU (backstore, replication journal, range waits), not
    the network time of the Data-Out phase.
    """

    __slots__ = ("read_bytes", "read_hist", "read_ns", "read_ops",
                 "write_bytes", "write_hist", "write_ns", "write_ops")

    def __init__(self) -> None:
        self.read_ops = 0
        self.read_bytes = 0
        self.read_ns = 0
        self.read_hist = [0] * (len(BOUNDS_NS) + 1)
        self.write_ops = 0
        self.write_bytes = 0
        self.write_ns = 0
        self.write_hist = [0] * (len(BOUNDS_NS) + 1)

    def done(self, kind: int, cmd: ScsiCommand, res: ScsiResult | None, ns: int) -> None:
        """One command of ``kind`` finished after ``ns`` nanoseconds (``res`` None: it raised)."""
        good = res is not None and res.status == 0
        if kind == READ:
            self.read_ops += 1
            self.read_ns += ns
            self.read_hist[bisect_left(BOUNDS_NS, ns)] += 1
            if good:
                data = res.data  # type: ignore[union-attr]
                if data is not None:
                    self.read_bytes += len(data)
            return
        self.write_ops += 1
        self.write_ns += ns
        self.write_hist[bisect_left(BOUNDS_NS, ns)] += 1
        if good:
            data = cmd.data_out
            if data is not None:
                self.write_bytes += len(data) >> 1 if kind == CAW else len(data)

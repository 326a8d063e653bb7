"""A deterministic simulator of remote copy (after FoundationDB's simulation and TigerBeetle's VOPR).

The real ``Array`` and ``Replication`` code runs on a virtual-time event loop, over simulated
disks (volatile write cache, crash loses or tears unsynced blocks) and a simulated link (delays,
drops, lost replies, partitions), driven by one seeded RNG; invariants are checked as it runs.
See ``docs/simulator.md``.
"""

from .plan import FAULT_CLASSES, Options
from .runner import Result, run_seed

__all__ = ["FAULT_CLASSES", "Options", "Result", "run_seed"]

"""Fault classes and the per-seed plan (swarm testing: each seed turns a random subset of the
enabled classes on, at rates it also draws)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: every fault class and operator action the simulator can inject
FAULT_CLASSES: tuple[str, ...] = (
    "crash_primary",    # power cut of the array holding the P-VOLs (unsynced writes lost or torn)
    "crash_secondary",  # power cut of the array holding the S-VOLs
    "restart",          # clean stop and start of either array
    "partition",        # the link is cut for a while
    "drop",             # a request is lost before the peer sees it (connection drops)
    "lost_reply",       # the peer acted, the caller gets LinkDown or LinkTimeout
    "spike",            # a request stalls past its timeout
    "dup",              # a read-only request runs twice on the peer
    "journal_full",     # a journal small enough to fill up (PSUE)
    "split",            # pairsplit (sometimes -rw)
    "resync",           # pairresync
    "takeover",         # takeover (swap if the primary answers, SVOL takeover if not)
    "swap_back",        # pairresync --swap after an SVOL takeover
    "delete",           # pairdelete (and a new paircreate later)
    "stray_writes",     # hosts also write to the other site (must be refused unless allowed)
    "copy_writes",      # hosts keep writing while a pair copies (otherwise they wait for PAIR)
)


#: classes that hit defects known and not yet fixed (see docs/simulator.md); CI runs without them.
#: Empty: CI runs every class (docs/simulator.md has the long run).
KNOWN_DEFECT_CLASSES: frozenset[str] = frozenset()


#: host writes per seed at most in the CI test (fewer than the default: 500 seeds in ~2 minutes)
CI_MAX_WRITES = 300


@dataclass
class Options:
    """What a batch of seeds may use (the CLI's --off and the CI test set ``enabled``)."""

    enabled: frozenset[str] = field(default_factory=lambda: frozenset(FAULT_CLASSES))
    trace_len: int = 60
    max_writes: int = 400


@dataclass
class Plan:
    """What one seed does, all drawn from its RNG."""

    active: frozenset[str]
    vol_size: int
    journal_size: int
    hosts: int
    queue_depth: int
    writes: int
    duration: float  # virtual seconds the hosts' writes spread over
    fua_prob: float
    flush_prob: float
    stray_prob: float
    action_gap: float  # mean virtual seconds between chaos actions
    disk_latency: float
    keep_prob: float  # chance an unsynced block survives a crash
    link_latency: float
    drop_prob: float
    lost_reply_prob: float
    spike_prob: float
    dup_prob: float
    weights: dict[str, float]

    def describe(self) -> str:
        return (f"classes={','.join(sorted(self.active)) or '-'} vol={self.vol_size >> 10}KiB "
                f"jnl={self.journal_size >> 10}KiB hosts={self.hosts}x{self.queue_depth} writes={self.writes}/{self.duration:.1f}s "
                f"fua={self.fua_prob:.2f} flush={self.flush_prob:.2f} keep={self.keep_prob:.2f} "
                f"drop={self.drop_prob:.3f} lost={self.lost_reply_prob:.3f} spike={self.spike_prob:.3f}")


def draw_plan(rng: random.Random, opts: Options) -> Plan:
    active = frozenset(c for c in FAULT_CLASSES if c in opts.enabled and rng.random() < 0.6)

    def rate(cls: str, hi: float) -> float:
        return rng.uniform(0, hi) if cls in active else 0.0

    weights = {c: rng.uniform(0.2, 1.0) for c in sorted(active)
               if c not in ("drop", "lost_reply", "spike", "dup", "journal_full", "stray_writes", "copy_writes")}
    return Plan(
        active=active,
        vol_size=rng.choice([1, 2]) << 20,
        journal_size=rng.choice([48, 64, 96]) << 10 if "journal_full" in active else 2 << 20,
        hosts=rng.randint(2, 4),
        queue_depth=rng.randint(4, 8),
        writes=rng.randint(opts.max_writes // 2, opts.max_writes),
        duration=rng.uniform(2.0, 8.0),
        fua_prob=rng.uniform(0, 0.2),
        flush_prob=rng.uniform(0, 0.1),
        stray_prob=rate("stray_writes", 0.05),
        action_gap=rng.uniform(0.05, 0.4),
        disk_latency=rng.uniform(0.00005, 0.001),
        keep_prob=rng.uniform(0, 1),
        link_latency=rng.uniform(0.0001, 0.003),
        drop_prob=rate("drop", 0.02),
        lost_reply_prob=rate("lost_reply", 0.05),
        spike_prob=rate("spike", 0.01),
        dup_prob=rate("dup", 0.05),
        weights=weights,
    )

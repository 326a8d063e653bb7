"""Run one seed (or many) and report: the verdicts, a short trace, a digest of the whole trace."""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field

from .link import NetFaults
from .loop import Stalled, run_virtual
from .plan import CI_MAX_WRITES, FAULT_CLASSES, KNOWN_DEFECT_CLASSES, Options, Plan, draw_plan

CI_CLASSES = frozenset(FAULT_CLASSES) - KNOWN_DEFECT_CLASSES
from .scenario import Scenario
from .world import World


@dataclass
class Result:
    seed: int
    plan: Plan
    violations: list[tuple[str, str]]
    trace: list[str]
    digest: str
    virtual_seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    #: the CLI options that reproduce this run's options ("--ci " for the CI test's)
    replay_flags: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self) -> str:
        lines = [f"seed {self.seed}: {'ok' if self.ok else 'VIOLATION'} ({self.plan.describe()})"]
        for kind, msg in self.violations:
            lines.append(f"  {kind}: {msg}")
        if not self.ok:
            lines.append(f"  last {len(self.trace)} events:")
            lines += [f"    {t}" for t in self.trace]
            lines.append(f"  replay: python -m storaged.sim {self.replay_flags}--replay {self.seed}")
        return "\n".join(lines)


def _scratch() -> str:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # table fsyncs cost ~1 ms on a disk
    return tempfile.mkdtemp(prefix="storaged-sim-", dir=base)


def run_seed(seed: int, opts: Options | None = None) -> Result:
    opts = opts or Options()
    plan_rng = random.Random(seed ^ 0x5EED)
    plan = draw_plan(plan_rng, opts)
    faults = NetFaults(latency=plan.link_latency, spike_prob=plan.spike_prob, drop_prob=plan.drop_prob,
                       lost_reply_prob=plan.lost_reply_prob, dup_prob=plan.dup_prob)
    base = _scratch()
    world = World(seed, base, faults, opts.trace_len)
    world.trace(f"seed {seed}: {plan.describe()}")
    quiet = logging.getLogger("storaged")
    level, propagate = quiet.level, quiet.propagate
    quiet.setLevel(logging.CRITICAL + 1)
    try:
        with world.hooks():
            try:
                run_virtual(lambda: Scenario(world, plan).run(), world.clock, world.rng, world.sample,
                            lambda: world.count("executor_calls"), lambda: world.count("busy_waits"))
            except Stalled as exc:
                world.violation("stalled", str(exc))
    finally:
        quiet.setLevel(level)
        quiet.propagate = propagate
        shutil.rmtree(base, ignore_errors=True)
    flags = "--ci " if opts.max_writes == CI_MAX_WRITES and opts.enabled == CI_CLASSES else ""
    return Result(seed, plan, list(world.violations), list(world.ring), world.digest.hexdigest(),
                  world.clock.now, dict(world.stats), flags)

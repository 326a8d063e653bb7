"""``python -m storaged.sim --seeds A..B`` runs seeds; ``--replay SEED`` runs one again, verbosely.

Exit status 1 when any seed found a violation. ``--off`` switches fault classes off (comma list),
``--time-limit`` stops starting new seeds after that many (real) seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

from .plan import CI_MAX_WRITES, FAULT_CLASSES, KNOWN_DEFECT_CLASSES, Options
from .runner import run_seed


def _seeds(text: str) -> range:
    a, _, b = text.partition("..")
    return range(int(a), int(b or a) + 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m storaged.sim", description=__doc__)
    ap.add_argument("--seeds", type=_seeds, help="A..B (inclusive)")
    ap.add_argument("--replay", type=int, help="run one seed and print its trace")
    ap.add_argument("--off", default="", help=f"fault classes to switch off: {','.join(FAULT_CLASSES)}")
    ap.add_argument("--ci", action="store_true", help="the CI test's options: the known-defect classes off (see "
                                                      "--on) and at most CI_MAX_WRITES writes per seed")
    ap.add_argument("--on", default="", help="with --ci: known-defect classes to switch on again (comma list)")
    ap.add_argument("--max-writes", type=int, default=0, help="host writes per seed at most (default 400)")
    ap.add_argument("--trace", type=int, default=60, help="events shown for a failing seed")
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop starting seeds after this many seconds")
    ap.add_argument("--quiet", action="store_true", help="print only failing seeds and the summary")
    args = ap.parse_args(argv)
    off = {c for c in args.off.split(",") if c}
    on = {c for c in args.on.split(",") if c}
    unknown = (off | on) - set(FAULT_CLASSES)
    if unknown:
        ap.error(f"unknown fault classes: {', '.join(sorted(unknown))}")
    if args.ci:
        off |= KNOWN_DEFECT_CLASSES - on
    opts = Options(enabled=frozenset(FAULT_CLASSES) - off, trace_len=args.trace,
                   max_writes=args.max_writes or (CI_MAX_WRITES if args.ci else 400))
    if args.replay is not None:
        opts.trace_len = max(args.trace, 400)
        r = run_seed(args.replay, opts)
        print(r.report() if not r.ok else r.report() + "\n" + "\n".join(f"    {t}" for t in r.trace))
        print(f"trace digest {r.digest}; {r.virtual_seconds:.3f} virtual seconds; {r.stats}")
        return 0 if r.ok else 1
    if args.seeds is None:
        ap.error("give --seeds A..B or --replay SEED")
    start = time.perf_counter()
    kinds: dict[str, list[int]] = {}
    n = 0
    for seed in args.seeds:
        if args.time_limit and time.perf_counter() - start > args.time_limit:
            break
        r = run_seed(seed, opts)
        n += 1
        for kind, _ in r.violations:
            kinds.setdefault(kind, []).append(seed)
        if not r.ok or not args.quiet:
            print(r.report() if not r.ok else f"seed {seed}: ok", flush=True)
    took = time.perf_counter() - start
    failed = len({s for v in kinds.values() for s in v})
    print(f"{n} seeds in {took:.1f}s ({n / took if took else 0:.1f} seeds/s): {n - failed} passed, {failed} failed")
    for kind, seeds in sorted(kinds.items()):
        print(f"  {kind}: {len(seeds)} seeds, e.g. {seeds[:8]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

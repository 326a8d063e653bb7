#!/usr/bin/env python3
"""Hostile initiators against a live target: what they cost in memory and in others' latency.

The write bomb: each hostile session logs in normally, then sends COMMANDS x WRITE(16) with an
Expected Data Transfer Length of EDTL bytes and no data at all, ignoring the target's R2Ts (and
its CmdSN window). A well-behaved target holds a few bytes per command; one that allocates the
write buffer when the command arrives holds COMMANDS x EDTL. Meanwhile a second, well-behaved
session sends INQUIRY in a loop; its latency shows whether the target still serves others.

Runs with 1 and with 4 hostile sessions at once (``--sessions 1,4``), against storaged and, unless
``--no-tgtd``, against a tgtd started the same way as bench_vs_tgt.py starts it.

Usage: .venv/bin/python benchmarks/bench_hostile.py [--sessions 1,4] [--commands 128] [--edtl 64MiB]
       [--duration 10] [--no-tgtd] [--storaged-src DIR] [--json FILE]
Progress goes to stderr, results to stdout. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import bench_vs_tgt as base  # the storaged and tgtd launchers, shared with the throughput benchmark

from storaged.iscsi.initiator import IscsiSession
from storaged.iscsi.pdu import PDU, Opcode, encode_lun

MiB = 1 << 20
LUN_SIZE = 1 << 30
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])


@dataclass
class BombResult:
    target: str
    sessions: int
    commands: int
    edtl: int
    rss_before_mib: float
    rss_peak_mib: float
    rss_growth_mib: float
    inquiries: int
    inquiry_median_ms: float
    inquiry_p99_ms: float
    inquiry_max_ms: float
    inquiry_failures: int


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise base.BenchError(f"no VmRSS for pid {pid}")


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


async def bomb(session: IscsiSession, lun: int, commands: int, edtl: int, block_size: int = 512) -> None:
    """Send the WRITE(16)s with CmdSN counting up regardless of MaxCmdSN; never answer an R2T."""
    cdb = struct.unpack(">IIII", write16(0, edtl // block_size))
    for i in range(commands):
        session.send_pdu(PDU(Opcode.SCSI_COMMAND, flags=0xA1, lun=encode_lun(lun), itt=0x10000 + i, w20=edtl,
                             w24=session.cmdsn, w28=session.exp_statsn, w32=cdb[0], w36=cdb[1], w40=cdb[2],
                             w44=cdb[3]))
        session.cmdsn = (session.cmdsn + 1) & 0xFFFFFFFF
        await asyncio.sleep(0)


async def run_bomb(name: str, pid: int, port: int, iqn: str, lun: int, sessions: int, commands: int, edtl: int,
                   duration: float) -> BombResult:
    probe = IscsiSession()
    await probe.login("127.0.0.1", port, iqn, initiator="iqn.2026-11.io.bench:probe")
    await probe.scsi(lun, INQUIRY, read_length=96)
    evil = []
    for i in range(sessions):
        s = IscsiSession()
        await s.login("127.0.0.1", port, iqn, initiator=f"iqn.2026-11.io.bench:bomb{i}")
        evil.append(s)
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    peak = before
    latencies: list[float] = []
    failures = 0
    await asyncio.gather(*(bomb(s, lun, commands, edtl) for s in evil))
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            await probe.scsi(lun, INQUIRY, read_length=96, timeout=10.0)
            latencies.append(time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - a timed-out or refused INQUIRY is a result, not a crash
            failures += 1
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.05)
    for s in evil:
        await s.close()
    await probe.close()
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return BombResult(name, sessions, commands, edtl, before / 1024, peak / 1024, (peak - before) / 1024,
                      len(latencies), statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], ms[-1],
                      failures)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,4", help="hostile session counts to run, comma-separated")
    p.add_argument("--commands", type=int, default=128, help="WRITE(16)s per hostile session")
    p.add_argument("--edtl", type=lambda v: int(v.removesuffix("MiB")) * MiB, default=64 * MiB,
                   help="Expected Data Transfer Length of each, in MiB (e.g. 64MiB)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to watch after the bomb")
    p.add_argument("--no-tgtd", action="store_true", help="measure storaged only")
    p.add_argument("--storaged-src", help="run storaged from this source tree (e.g. an older commit)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--dir", help="where the work directory goes (default: the system temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.storaged_src:
        base.REPO = Path(args.storaged_src).resolve()
    counts = [int(x) for x in args.sessions.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="storaged-hostile-", dir=args.dir))
    base.progress(f"work directory {workdir}")
    results: list[BombResult] = []
    try:
        for n in counts:
            # a fresh target per run, so one run's leftovers do not count in the next
            with ExitStack() as stack:
                sd = base.Storaged(workdir, f"storaged-{n}", [(0, LUN_SIZE, "lun0.img")], no_uvloop=False)
                stack.callback(sd.stop)
                port = sd.start()
                assert sd.proc is not None
                base.progress(f"write bomb: {n} session(s) x {args.commands} x {args.edtl >> 20} MiB on storaged")
                results.append(asyncio.run(run_bomb("storaged", sd.proc.pid, port, base.STORAGED_IQN, 0, n,
                                                    args.commands, args.edtl, args.duration)))
                sd.check_alive()
            if args.no_tgtd:
                continue
            with ExitStack() as stack:
                backing = workdir / f"tgtd-{n}.img"
                with open(backing, "wb") as f:
                    f.truncate(LUN_SIZE)
                tgt = base.Tgtd(workdir / f"t{n}", backing)
                stack.callback(tgt.stop)
                port = tgt.start()
                assert tgt.proc is not None
                base.progress(f"write bomb: {n} session(s) x {args.commands} x {args.edtl >> 20} MiB on tgtd")
                results.append(asyncio.run(run_bomb("tgtd", tgt.proc.pid, port, base.TGTD_IQN, 1, n,
                                                    args.commands, args.edtl, args.duration)))
    except base.BenchError as exc:
        print(f"bench_hostile: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{'target':9} {'sessions':>8} {'RSS before':>11} {'RSS peak':>9} {'growth':>8} "
          f"{'INQUIRY median':>15} {'p99':>8} {'max':>8} {'n':>5} {'failed':>6}")
    for r in results:
        print(f"{r.target:9} {r.sessions:8d} {r.rss_before_mib:8.1f} MiB {r.rss_peak_mib:5.1f} MiB "
              f"{r.rss_growth_mib:4.1f} MiB {r.inquiry_median_ms:12.2f} ms {r.inquiry_p99_ms:5.1f} ms "
              f"{r.inquiry_max_ms:5.1f} ms {r.inquiries:5d} {r.inquiry_failures:6d}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

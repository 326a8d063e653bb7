#!/usr/bin/env python3
"""Benchmark storaged against tgtd (the Linux SCSI target framework) with ``qemu-img bench``.

Both targets serve a fresh sparse file of the same size on 127.0.0.1 and are driven by the same
initiator (QEMU's libiscsi block driver), so the ratio storaged/tgtd measures the target, not the
client. Runs alternate storaged, tgtd, storaged, tgtd... so that slow drifts of the machine (other
load, page cache, CPU frequency) hit both targets alike; the median of the rounds is reported.

A second part measures storaged's memory footprint with 64 x 1 TiB thin LUNs and 16 idle sessions.

Usage: .venv/bin/python benchmarks/bench_vs_tgt.py [--quick] [--rounds N] [--json FILE] [--no-rss]
Progress goes to stderr, results to stdout. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

STORAGED_IQN = "iqn.2026-11.io.storaged:bench"
TGTD_IQN = "iqn.2026-11.io.tgtd:bench"
WRITE_PATTERN = 165  # 0xa5, the same byte for the prefill and the timed writes
RSS_LUNS, RSS_LUN_SIZE, RSS_SESSIONS = 64, 1 * TiB, 16
RSS_GOAL_MIB = 100


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message (and the log to look at)."""


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that the same cleanup runs as for Ctrl-C."""


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- workloads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One qemu-img bench invocation: request size, queue depth, request count, read or write."""

    name: str
    size: int
    depth: int
    count: int
    write: bool

    @property
    def unit(self) -> str:
        # Small requests are limited by per-command cost (IOPS), large ones by bytes moved (MB/s).
        return "IOPS" if self.size <= 4 * KiB else "MB/s"

    def rate(self, seconds: float) -> float:
        if self.unit == "IOPS":
            return self.count / seconds
        return self.count * self.size / seconds / 1e6

    def size_arg(self) -> str:
        return f"{self.size // MiB}M" if self.size >= MiB else f"{self.size // KiB}k"


def workloads(quick: bool) -> list[Workload]:
    """The matrix from the brief; --quick halves every count (the ratios stay comparable)."""
    shapes = [("4k QD1", 4 * KiB, 1, 8000), ("4k QD32", 4 * KiB, 32, 40000),
              ("64k QD8", 64 * KiB, 8, 12000), ("1M QD8", MiB, 8, 1000)]
    out = []
    for label, size, depth, count in shapes:
        if quick:
            count //= 2
        for write in (False, True):
            out.append(Workload(f"{label} {'write' if write else 'read'}", size, depth, count, write))
    return out


# --- targets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where qemu-img finds a LUN; tgtd's LUN 0 is its controller, so its disk is LUN 1."""

    name: str
    port: int
    iqn: str
    lun: int
    log: Path  # quoted when a run against this target fails

    def qemu_filename(self, region: int) -> str:
        """A raw image limited to the benchmark region, so qemu-img bench wraps inside it.

        qemu-img bench wraps its offset at the image size; capping the raw image at the prefilled
        region keeps every timed request inside data written by the prefill (overwrites, no holes).
        """
        spec = {"driver": "raw", "size": region,
                "file": {"driver": "iscsi", "transport": "tcp", "portal": f"127.0.0.1:{self.port}",
                         "target": self.iqn, "lun": self.lun}}
        return "json:" + json.dumps(spec, separators=(",", ":"))


def free_port() -> int:
    """A port the kernel just handed out; tgtd needs a number up front (storaged takes port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes], name: str, grace: float = 10.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit within the grace period."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        progress(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f} s, killing it")
        proc.kill()
        proc.wait()


class Storaged:
    """A storaged process on a free port, serving the targets of a generated YAML config.

    Its stderr goes to a log file in the work directory, which is kept when something fails.
    """

    def __init__(self, workdir: Path, tag: str, luns: list[tuple[int, int, str]], no_uvloop: bool) -> None:
        self.no_uvloop = no_uvloop
        self.dir = workdir / tag
        self.data_dir = self.dir / "data"
        self.log = self.dir / "storaged.log"
        self.luns = luns  # (lun, size, file)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.stopped = False

    def write_config(self) -> Path:
        lines = ["array: {name: bench}", "targets:", f"  - name: {STORAGED_IQN}", "    luns:"]
        lines += [f"      - {{lun: {lun}, size: {size}, file: {name}, thin: true}}"
                  for lun, size, name in self.luns]
        path = self.dir / "storaged.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 60.0) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, *self.entry_point(), "--config", str(config), "--listen", "127.0.0.1:0",
               "--data-dir", str(self.data_dir)]
        with open(self.log, "wb") as log:
            # Own session: Ctrl-C in the terminal reaches only us; we stop storaged with SIGTERM.
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.port = self._wait_for_port(timeout)
        progress(f"storaged pid {self.proc.pid} listening on 127.0.0.1:{self.port} (log {self.log})")
        return self.port

    def entry_point(self) -> list[str]:
        """``-m storaged``, or the same main() with uvloop hidden so the stock asyncio loop runs."""
        if not self.no_uvloop:
            return ["-m", "storaged"]
        return ["-c", "import sys; sys.modules['uvloop'] = None; "
                "from storaged.__main__ import main; sys.exit(main(sys.argv[1:]))"]

    def _wait_for_port(self, timeout: float) -> int:
        assert self.proc is not None
        pattern = re.compile(r"iSCSI portal listening on 127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pattern.search(self.log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise BenchError(f"storaged exited with status {self.proc.returncode} before listening; "
                                 f"log {self.log}:\n{log_tail(self.log)}")
            time.sleep(0.1)
        raise BenchError(f"storaged did not report its port within {timeout:.0f} s; log {self.log}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"storaged died (exit status {code}); log {self.log}:\n{log_tail(self.log)}")

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError("no VmRSS in /proc status")

    def stop(self) -> None:
        if self.proc is not None and not self.stopped:
            self.stopped = True
            stop_process(self.proc, "storaged")
            progress(f"storaged stopped (exit status {self.proc.returncode})")


class Tgtd:
    """A private tgtd instance: its own control port, its own portal, one target with one LUN.

    tgtd ignores SIGTERM, so it is stopped through tgtadm (delete the target, then the system) and
    SIGKILLed by PID if that does not work. Another tgtd may own a control port already; then
    ours fails to lock it and exits, and we try another.
    """

    def __init__(self, workdir: Path, backing: Path) -> None:
        self.dir = workdir / "tgtd"
        self.log = self.dir / "tgtd.log"
        self.backing = backing
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctrl = 0
        self.port = 0
        self.stopped = False

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["tgtadm", "-C", str(self.ctrl), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def start(self, attempts: int = 10) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.ctrl = random.randint(20000, 60000)
            if Path(f"/var/run/tgtd/socket.{self.ctrl}").exists():
                continue  # probably another tgtd's
            self.port = free_port()
            if self._launch():
                self._configure()
                progress(f"tgtd pid {self.proc.pid} control port {self.ctrl} "  # type: ignore[union-attr]
                         f"listening on 127.0.0.1:{self.port} (log {self.log})")
                return self.port
        raise BenchError(f"could not start tgtd after {attempts} control ports; log {self.log}:\n"
                         f"{log_tail(self.log)}")

    def _launch(self, timeout: float = 10.0) -> bool:
        """Start tgtd; False if it exited (control port taken), True once tgtadm reaches it."""
        cmd = ["tgtd", "-f", "-C", str(self.ctrl), "--iscsi", f"portal=127.0.0.1:{self.port}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.tgtadm("--op", "show", "--mode", "system", check=False).returncode == 0:
                time.sleep(0.3)  # a tgtd that lost the lock race exits right away: make sure ours lives
                if self.proc.poll() is None:
                    return True
                return False
            time.sleep(0.1)
        self.stop()
        return False

    def _configure(self) -> None:
        self.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", TGTD_IQN)
        self.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                    "--backing-store", str(self.backing))
        self.tgtadm("--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if not port_accepts(self.port):
            raise BenchError(f"tgtd does not accept connections on 127.0.0.1:{self.port}; log {self.log}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"tgtd died; log {self.log}:\n{log_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
                        check=False)
            self.tgtadm("--op", "delete", "--mode", "system", check=False)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                progress(f"tgtd (pid {self.proc.pid}) still running after tgtadm delete, killing it")
                self.proc.kill()
                self.proc.wait()
        for suffix in ("", ".lock"):  # our control port's files; tgtd leaves them behind
            Path(f"/var/run/tgtd/socket.{self.ctrl}{suffix}").unlink(missing_ok=True)
        progress("tgtd stopped")


# --- qemu-img bench ------------------------------------------------------------------------------


def qemu_bench(target: Target, wl: Workload, region: int, timeout: float = 900.0) -> float:
    """Run one qemu-img bench and return the seconds it reports for the whole run."""
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-n", "-s", wl.size_arg(), "-d", str(wl.depth),
           "-c", str(wl.count)]
    if wl.write:
        cmd += ["-w", f"--pattern={WRITE_PATTERN}"]
    cmd.append(target.qemu_filename(region))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"qemu-img bench {wl.name} against {target.name} took longer than {timeout:.0f} s")
    m = re.search(r"Run completed in ([0-9.]+) seconds", res.stdout)
    if res.returncode != 0 or not m:
        out = (res.stderr.strip() or res.stdout.strip())[-2000:]
        raise BenchError(f"qemu-img bench {wl.name} against {target.name} failed "
                         f"(exit status {res.returncode}): {out}\n"
                         f"{target.name} log {target.log}, last lines:\n{log_tail(target.log, 15)}")
    return float(m.group(1))


def prefill(target: Target, region: int) -> None:
    """Write the whole region once in 1 MiB requests so that timed writes are overwrites.

    A thin LUN's first write to a block allocates it in the file system; timing that would measure
    ext4/xfs block allocation rather than the target.
    """
    wl = Workload("prefill", MiB, 8, region // MiB, True)
    started = time.monotonic()
    qemu_bench(target, wl, region, timeout=1800)
    progress(f"prefilled {region // MiB} MiB of {target.name} in {time.monotonic() - started:.1f} s")


def check_allocated(image: Path, region: int) -> None:
    """The prefill must have landed in the backing file; otherwise reads would hit holes."""
    used = image.stat().st_blocks * 512
    if used < region:
        raise BenchError(f"after the prefill {image} has only {used // MiB} MiB allocated, "
                         f"expected {region // MiB} MiB")


# --- the matrix ----------------------------------------------------------------------------------


@dataclass
class Row:
    """The samples for one workload and the figures derived from them."""

    workload: str
    unit: str
    samples: dict[str, list[float]] = field(default_factory=lambda: {"storaged": [], "tgtd": []})

    def median(self, target: str) -> float:
        return statistics.median(self.samples[target])

    def ratio(self) -> float:
        return self.median("storaged") / self.median("tgtd")

    def spread(self, target: str) -> float:
        """(max - min) / median over the rounds: how much to trust this row's median."""
        s = self.samples[target]
        return (max(s) - min(s)) / statistics.median(s)


def run_matrix(targets: list[Target], wls: list[Workload], rounds: int, region: int,
               checks: list[Callable[[], None]]) -> list[Row]:
    """Each round runs every workload on storaged then tgtd, so both see the same machine state."""
    rows = {wl.name: Row(wl.name, wl.unit) for wl in wls}
    for rnd in range(1, rounds + 1):
        for wl in wls:
            for target in targets:
                seconds = qemu_bench(target, wl, region)
                for check in checks:
                    check()
                value = wl.rate(seconds)
                rows[wl.name].samples[target.name].append(value)
                progress(f"round {rnd}/{rounds} {wl.name:14} {target.name:8} {value:10.1f} {wl.unit} "
                         f"({seconds:.3f} s)")
    return list(rows.values())


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(rows: list[Row]) -> str:
    head = f"{'workload':16} {'unit':5} {'storaged':>10} {'tgtd':>10} {'ratio':>7} {'spread s/t':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"{r.spread('storaged'):.0%}/{r.spread('tgtd'):.0%}"
        lines.append(f"{r.workload:16} {r.unit:5} {r.median('storaged'):10.1f} {r.median('tgtd'):10.1f} "
                     f"{r.ratio():6.2f}x {spread:>12}")
    lines.append("-" * len(head))
    lines.append(f"geometric mean of storaged/tgtd ratios: {geomean([r.ratio() for r in rows]):.2f}x")
    return "\n".join(lines)


def format_goals(rows: list[Row]) -> str:
    """The throughput goals, as a reading aid; they do not change the exit status."""
    goals = [("1M QD8", 0.8), ("4k QD32", 0.5)]
    out = []
    for prefix, goal in goals:
        for r in rows:
            if r.workload.startswith(prefix):
                verdict = "met" if r.ratio() >= goal else "NOT met"
                out.append(f"goal {r.workload} >= {goal}x tgtd: {r.ratio():.2f}x {verdict}")
    return "\n".join(out)


def bench_matrix(args: argparse.Namespace, workdir: Path, stack: ExitStack) -> dict[str, object]:
    region = args.region_mib * MiB
    lun_size = max(args.lun_size_mib * MiB, region)
    storaged = Storaged(workdir, "storaged-bench", [(0, lun_size, "lun0.img")], args.no_uvloop)
    stack.callback(storaged.stop)
    s_port = storaged.start()
    backing = workdir / "tgtd" / "lun.img"
    backing.parent.mkdir(parents=True, exist_ok=True)
    with open(backing, "wb") as f:
        f.truncate(lun_size)  # sparse, the same size as storaged's LUN
    tgtd = Tgtd(workdir, backing)
    stack.callback(tgtd.stop)
    t_port = tgtd.start()

    targets = [Target("storaged", s_port, STORAGED_IQN, 0, storaged.log),
               Target("tgtd", t_port, TGTD_IQN, 1, tgtd.log)]
    for t, image in zip(targets, [storaged.data_dir / "lun0.img", backing]):
        prefill(t, region)
        check_allocated(image, region)
    wls = workloads(args.quick)
    rows = run_matrix(targets, wls, args.rounds, region, [storaged.check_alive, tgtd.check_alive])
    print(format_table(rows))
    print(format_goals(rows))
    sys.stdout.flush()
    storaged.stop()
    tgtd.stop()
    return {
        "rounds": args.rounds, "quick": args.quick, "no_uvloop": args.no_uvloop,
        "region_bytes": region, "lun_size_bytes": lun_size,
        "workloads": [asdict(wl) for wl in wls],
        "rows": [{"workload": r.workload, "unit": r.unit, "samples": r.samples,
                  "storaged": r.median("storaged"), "tgtd": r.median("tgtd"), "ratio": r.ratio(),
                  "spread_storaged": r.spread("storaged"), "spread_tgtd": r.spread("tgtd")} for r in rows],
        "geomean_ratio": geomean([r.ratio() for r in rows]),
    }


# --- memory footprint ----------------------------------------------------------------------------


async def idle_sessions_rss(storaged: Storaged, settle: float) -> int:
    """Log in RSS_SESSIONS sessions, leave them idle for `settle` seconds, return VmRSS in KiB."""
    sys.path.insert(0, str(REPO))
    # The project's own initiator: a session stays logged in and idle for as long as we like.
    from storaged.iscsi.initiator import InitiatorError, IscsiSession

    sessions: list[IscsiSession] = []
    try:
        for i in range(RSS_SESSIONS):
            s = IscsiSession()
            try:
                await s.login("127.0.0.1", storaged.port, STORAGED_IQN, initiator=f"iqn.2026-11.test:h{i}")
            except (TimeoutError, OSError, InitiatorError) as exc:
                await s.close()
                raise BenchError(f"session {i} could not log in to storaged: {type(exc).__name__}: {exc}\n"
                                 f"storaged log {storaged.log}, last lines:\n{log_tail(storaged.log, 15)}")
            sessions.append(s)
        progress(f"{len(sessions)} sessions logged in; idling {settle:.0f} s")
        await asyncio.sleep(settle)
        storaged.check_alive()
        return storaged.rss_kib()
    finally:
        for s in sessions:
            try:
                await s.logout()
            except Exception as exc:  # noqa: BLE001 - a failed logout must not hide the measurement
                progress(f"logout failed: {exc!r}")
                await s.close()


def disk_usage(directory: Path, pattern: str) -> tuple[int, int]:
    """(bytes allocated, apparent size) of the matching files, like du and du --apparent-size."""
    used = apparent = 0
    for p in directory.glob(pattern):
        st = p.stat()
        used += st.st_blocks * 512
        apparent += st.st_size
    return used, apparent


def bench_rss(args: argparse.Namespace, workdir: Path, stack: ExitStack) -> dict[str, object]:
    luns = [(n, RSS_LUN_SIZE, f"lun{n}.img") for n in range(RSS_LUNS)]
    storaged = Storaged(workdir, "storaged-rss", luns, args.no_uvloop)
    stack.callback(storaged.stop)
    storaged.start()
    idle_rss = storaged.rss_kib()
    progress(f"storaged RSS with {RSS_LUNS} LUNs and no sessions: {idle_rss / 1024:.1f} MiB")
    rss = asyncio.run(idle_sessions_rss(storaged, args.settle))
    used, apparent = disk_usage(storaged.data_dir, "lun*.img")
    storaged.check_alive()
    storaged.stop()
    rss_mib = rss / 1024
    print(f"RSS with {RSS_LUNS} x 1 TiB thin LUNs and {RSS_SESSIONS} idle sessions: {rss_mib:.1f} MiB "
          f"(goal < {RSS_GOAL_MIB} MiB: {'met' if rss_mib < RSS_GOAL_MIB else 'NOT met'})")
    print(f"disk used by the {RSS_LUNS} LUN files: {used // KiB} KiB allocated of "
          f"{apparent / TiB:.0f} TiB apparent (du)")
    sys.stdout.flush()
    return {"rss_mib": rss_mib, "rss_no_sessions_mib": idle_rss / 1024, "luns": RSS_LUNS,
            "lun_size_bytes": RSS_LUN_SIZE, "sessions": RSS_SESSIONS, "disk_used_bytes": used,
            "disk_apparent_bytes": apparent}


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="storaged vs tgtd with qemu-img bench, plus storaged's RSS.")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per target (default 3)")
    ap.add_argument("--quick", action="store_true", help="halve the request counts")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--rss", action="store_true", help="run only the memory part")
    part.add_argument("--no-rss", action="store_true", help="skip the memory part")
    ap.add_argument("--dir", default="/var/tmp", help="where the temporary work directory goes "
                    "(needs room for 2 x the region; default /var/tmp)")
    ap.add_argument("--region-mib", type=int, default=1024, help="benchmark region, prefilled (default 1024)")
    ap.add_argument("--lun-size-mib", type=int, default=2048, help="LUN size (default 2048)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds the sessions idle before reading RSS")
    ap.add_argument("--no-uvloop", action="store_true", help="run storaged on the stock asyncio loop even "
                    "when uvloop is installed (python -m storaged picks uvloop if it can import it)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def check_tools(need_tgt: bool) -> None:
    tools = ["qemu-img", "tgtd", "tgtadm"] if need_tgt else []
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} "
                         "(apt-get install tgt qemu-utils qemu-block-extra)")
    if need_tgt and os.geteuid() != 0:
        raise BenchError("tgtd needs root")


def on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: do not interrupt the cleanup
    raise Terminated()


def clean_workdir(workdir: Path, keep_logs: bool) -> None:
    """Remove the work directory; after a failure keep the logs (not the GiB-sized LUN files)."""
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for img in workdir.rglob("*.img"):
        img.unlink(missing_ok=True)
    progress(f"work directory kept for its logs: {workdir}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    run_matrix_part, run_rss_part = not args.rss, args.rss or not args.no_rss
    workdir = Path(tempfile.mkdtemp(prefix="storaged-bench-", dir=args.dir))
    progress(f"work directory {workdir}")
    results: dict[str, object] = {}
    failed = False
    try:
        check_tools(run_matrix_part)
        with ExitStack() as stack:  # stops every process started, in reverse order, whatever happens
            if run_matrix_part:
                results["matrix"] = bench_matrix(args, workdir, stack)
            if run_rss_part:
                results["rss"] = bench_rss(args, workdir, stack)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
            progress(f"results written to {args.json}")
        return 0
    except BenchError as exc:
        failed = True
        print(f"bench_vs_tgt: FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - e.g. the initiator failing to log in: same report
        failed = True
        print(f"bench_vs_tgt: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_vs_tgt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("bench_vs_tgt: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish undisturbed
        if args.keep:
            progress(f"work directory kept (--keep): {workdir}")
        else:
            clean_workdir(workdir, keep_logs=failed)


if __name__ == "__main__":
    sys.exit(main())

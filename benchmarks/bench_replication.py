#!/usr/bin/env python3
"""Remote copy costs: host writes on a paired P-VOL, RPO lag under load, initial copy speed.

Starts two storaged arrays on loopback that are each other's remote-link peers (site-a holds the
P-VOLs, site-b the S-VOLs and drives replication), then in one run measures:

1. ``qemu-img bench`` writes, 1 MiB QD8 and 4 KiB QD32, on site-a's LUN 0 while it is a P-VOL in
   state PAIR (autonomous replication running) against site-a's unpaired LUN 5 of the same size;
   alternating, ``--rounds`` times, median and ratio (goal >= 0.7x);
2. the RPO lag (PAIR_DISPLAY ``lag_seconds`` on site-b, sampled every 0.5 s) while the project's own
   initiator writes 256 KiB to the P-VOL every 12.5 ms (20 MiB/s) for ``--lag-seconds`` (goal < 1 s);
3. the initial copy time, PAIR_CREATE until PAIR, of a P-VOL that is 90% holes and of a full one,
   against a plain asyncio TCP stream between two processes on 127.0.0.1 measured in the same run.

Usage: .venv/bin/python benchmarks/bench_replication.py [--rounds N] [--lag-seconds S] [--keep]
Progress goes to stderr, the results to stdout. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SECRET = "bench-link-secret-0123456789"
INITIATOR = "iqn.2026-11.io.storaged:bench-repl"
PVOL, PJNL, CMDDEV, PLAIN, HOLEY = 0, 1, 2, 5, 6  # LUN numbers, the same on both arrays
PAIR_CREATE, PAIR_DISPLAY, PAIR_RESYNC, PAIR_DELETE, PAIR_SYNCWAIT = 16, 17, 19, 20, 25
LAG_CHUNK, LAG_PERIOD, LAG_SAMPLE = 256 * KiB, 0.0125, 0.5  # 256 KiB every 12.5 ms = 20 MiB/s
BLOCK = 512
WRITTEN_FRACTION = 0.10  # the holey P-VOL: 10% written in scattered 1 MiB extents
PAIRED_GOAL, LAG_GOAL = 0.7, 1.0


class BenchError(Exception):
    """Ends the benchmark with a one-line reason (and the logs to look at)."""


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that the same cleanup runs as for Ctrl-C."""


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


def iqn(site: str) -> str:
    return f"iqn.2026-11.io.storaged:{site}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fast_loop(coro: Any) -> Any:
    """The loop storaged itself runs on (uvloop when it can be imported)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# --- arrays --------------------------------------------------------------------------------------


def site_config(name: str, peer: str, link: int, peer_link: int, size_mib: int, jnl_mib: int) -> dict:
    return {"array": {"name": name},
            "remote": {"listen": f"127.0.0.1:{link}",
                       "peers": [{"name": peer, "address": f"127.0.0.1:{peer_link}", "secret": SECRET}]},
            "targets": [{"name": iqn(name), "luns": [
                {"lun": PVOL, "size": f"{size_mib}MiB", "file": "data0.img"},
                {"lun": PJNL, "size": f"{jnl_mib}MiB", "file": "journal1.img"},
                {"lun": CMDDEV, "size": "4MiB", "command_device": True},
                {"lun": PLAIN, "size": f"{size_mib}MiB", "file": "data5.img"},
                {"lun": HOLEY, "size": f"{size_mib}MiB", "file": "data6.img"}]}]}


def log_tail(path: Path, lines: int = 20, needle: str | None = None) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    if needle is not None:
        text = [ln for ln in text if needle in ln or "Traceback" in ln or "ERROR" in ln or "WARNING" in ln]
    return "\n".join(text[-lines:]) or "(nothing)"


class Array:
    """A storaged process in its own session (Ctrl-C reaches only us; we stop it by PID)."""

    def __init__(self, workdir: Path, name: str, cfg: dict) -> None:
        import yaml

        self.name = name
        self.data_dir = workdir / name
        self.data_dir.mkdir()
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "storaged", "--config", str(self.config), "--listen", "127.0.0.1:0",
                 "--data-dir", str(self.data_dir)],
                cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log.read_text(errors="replace"))
            if m:
                return m
            self.check_alive()
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not log {pattern!r} within {timeout:.0f} s; log {self.log}:\n"
                         f"{log_tail(self.log)}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.name} exited (status {code}); log {self.log}:\n{log_tail(self.log)}")

    def file(self, lun: int) -> Path:
        return self.data_dir / ("journal1.img" if lun == PJNL else f"data{lun}.img")

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{iqn(self.name)}/{lun}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            progress(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM for 20 s, killing it")
            self.proc.kill()
            self.proc.wait()
        progress(f"{self.name} (pid {self.proc.pid}) stopped, exit status {self.proc.returncode}")


def mapped_bytes(path: Path) -> int:
    """Bytes in data extents (SEEK_DATA/SEEK_HOLE): what a copy that skips holes has to read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        pos = total = 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            total += hole - data
            pos = hole
        return total
    finally:
        os.close(fd)


# --- command devices -----------------------------------------------------------------------------


class Commands:
    """One open command device per array for the length of one asyncio phase."""

    def __init__(self, arrays: dict[str, Array]) -> None:
        self.arrays = arrays
        self.devs: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}

    async def __aenter__(self) -> Commands:
        from hostctl.client import CommandDeviceClient
        from hostctl.device import IscsiDevice

        for name, arr in self.arrays.items():
            dev = await IscsiDevice.open(arr.url(CMDDEV), initiator=INITIATOR)
            self.devs[name] = dev
            self.clients[name] = CommandDeviceClient(dev, initiator=INITIATOR)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for dev in self.devs.values():
            try:
                await dev.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass

    async def run(self, site: str, process: int, params: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        from hostctl.errors import HostctlError

        try:
            resp = await self.clients[site].run(process, params, timeout=timeout)
        except HostctlError as exc:
            raise BenchError(f"command {process} {params} on {site}: {exc}") from None
        return resp.data or {}

    async def group(self, name: str) -> dict[str, Any]:
        groups = (await self.run("site-b", PAIR_DISPLAY, {"group": name}))["groups"]
        if not groups:
            raise BenchError(f"PAIR_DISPLAY on site-b shows no group {name}")
        return groups[0]


def brief(g: dict[str, Any]) -> str:
    pairs = ", ".join(f"{p.get('pvol')}->{p.get('svol')} {p.get('state')} {p.get('copy_percent')}%"
                      for p in g.get("pairs", []))
    return (f"state {g.get('state')} [{pairs}] error {g.get('error')!r} lag {g.get('lag_seconds')} "
            f"behind {g.get('behind')} journal {g.get('journal')}")


# --- qemu-img bench ------------------------------------------------------------------------------


def qemu_bench(url: str, args: list[str], count: int, log: Path, timeout: float = 900.0) -> float:
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-n", "-c", str(count), *args, url]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"qemu-img bench on {url} took longer than {timeout:.0f} s; log {log}") from None
    m = re.search(r"Run completed in ([0-9.]+) seconds", res.stdout)
    if res.returncode or not m:
        raise BenchError(f"qemu-img bench {' '.join(args)} on {url} failed (status {res.returncode}): "
                         f"{(res.stderr.strip() or res.stdout.strip())[-1000:]}\nlog {log}:\n{log_tail(log, 15)}")
    return float(m.group(1))


def prefill(arr: Array, lun: int, size: int) -> None:
    t0 = time.monotonic()
    qemu_bench(arr.url(lun), ["-s", "1M", "-d", "8", "-w", "--pattern=165"], size // MiB, arr.log, timeout=1800)
    used = arr.file(lun).stat().st_blocks * 512
    if used < size:
        raise BenchError(f"after the prefill {arr.file(lun)} has {used // MiB} MiB allocated, expected {size // MiB}")
    progress(f"prefilled {arr.name} LUN {lun} ({size // MiB} MiB) in {time.monotonic() - t0:.1f} s")


# --- pairs ---------------------------------------------------------------------------------------


@dataclass
class CopyResult:
    label: str
    size: int
    mapped: int
    seconds: float | None = None  # None: never reached PAIR
    last: dict[str, Any] = field(default_factory=dict)


async def create_and_wait(arrays: dict[str, Array], group: str, pvol: int, svol: int, label: str,
                          timeout: float) -> CopyResult:
    """PAIR_CREATE on site-b, then PAIR_DISPLAY every 0.1 s until PAIR: the initial copy time."""
    res = CopyResult(label, arrays["site-a"].file(pvol).stat().st_size, mapped_bytes(arrays["site-a"].file(pvol)))
    async with Commands(arrays) as cmd:
        params = {"group": group, "peer": "site-a", "pvol": pvol, "svol": svol, "pjnl": PJNL, "sjnl": PJNL}
        t0 = time.monotonic()
        created = await cmd.run("site-b", PAIR_CREATE, params)
        progress(f"{label}: PAIR_CREATE {params} -> {created}")
        k, reported = 0, t0
        while True:
            g = await cmd.group(group)
            now = time.monotonic()
            res.last = g
            if g["state"] == "PAIR":
                res.seconds = now - t0
                progress(f"{label}: PAIR after {res.seconds:.2f} s")
                return res
            if g["state"] != "COPY" or now - t0 > timeout:
                progress(f"{label}: gave up after {now - t0:.1f} s: {brief(g)}")
                return res
            if now - reported >= 5:
                reported = now
                progress(f"{label}: {now - t0:.0f} s: {brief(g)}")
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))


async def delete_pair(arrays: dict[str, Array], group: str) -> None:
    async with Commands(arrays) as cmd:
        r = await cmd.run("site-b", PAIR_DELETE, {"group": group})
        progress(f"PAIR_DELETE {group} -> {r}")


async def syncwait(arrays: dict[str, Array], group: str, timeout: float) -> tuple[str, float, dict[str, Any]]:
    """PAIR_SYNCWAIT for the newest write; (result, seconds, the group's display afterwards)."""
    async with Commands(arrays) as cmd:
        t0 = time.monotonic()
        r = await cmd.run("site-b", PAIR_SYNCWAIT, {"group": group, "timeout": timeout}, timeout=timeout + 30)
        secs = time.monotonic() - t0
        return str(r.get("result")), secs, await cmd.group(group)


async def resync_and_wait(arrays: dict[str, Array], group: str, timeout: float) -> dict[str, Any]:
    async with Commands(arrays) as cmd:
        await cmd.run("site-b", PAIR_RESYNC, {"group": group})
        t0 = time.monotonic()
        while True:
            g = await cmd.group(group)
            if g["state"] == "PAIR" or time.monotonic() - t0 > timeout:
                return g
            await asyncio.sleep(0.2)


def pair_problem(res: CopyResult, arrays: dict[str, Array], group: str) -> str:
    lines = [f"{res.label}: group {group} never reached PAIR: {brief(res.last)}"]
    for arr in arrays.values():
        lines.append(f"--- {arr.log} (lines about {group}, errors, warnings):")
        lines.append(log_tail(arr.log, 25, needle=f"group {group}"))
    return "\n".join(lines)


# --- 1. paired vs unpaired writes ----------------------------------------------------------------


@dataclass
class Row:
    name: str
    unit: str
    size: int
    count: int
    qargs: list[str]
    samples: dict[str, list[float]] = field(default_factory=lambda: {"paired": [], "unpaired": []})
    drains: list[float] = field(default_factory=list)
    backlogs: list[int] = field(default_factory=list)  # primary journal bytes in use right after a paired run
    notes: list[str] = field(default_factory=list)

    def rate(self, secs: float) -> float:
        return self.count * self.size / secs / 1e6 if self.unit == "MB/s" else self.count / secs

    def median(self, who: str) -> float:
        return statistics.median(self.samples[who])

    def spread(self, who: str) -> float:
        s = self.samples[who]
        return (max(s) - min(s)) / statistics.median(s)


def paired_vs_unpaired(args: argparse.Namespace, arrays: dict[str, Array], warnings: list[str]) -> list[Row]:
    a = arrays["site-a"]
    rows = [Row("write 1M QD8", "MB/s", MiB, args.count_1m, ["-s", "1M", "-d", "8", "-w", "--pattern=165"]),
            Row("write 4k QD32", "IOPS", 4 * KiB, args.count_4k, ["-s", "4k", "-d", "32", "-w", "--pattern=165"])]
    for rnd in range(1, args.rounds + 1):
        # alternate which goes first, so a slow drift of the machine does not favour one side
        order = [("paired", PVOL), ("unpaired", PLAIN)]
        if rnd % 2 == 0:
            order.reverse()
        for row in rows:
            for who, lun in order:
                if who == "paired":
                    g = asyncio.run(_display(arrays, "g1"))
                    if g["state"] != "PAIR":
                        raise BenchError(f"group g1 is not in PAIR before a paired run: {brief(g)}")
                secs = qemu_bench(a.url(lun), row.qargs, row.count, a.log)
                for arr in arrays.values():
                    arr.check_alive()
                value = row.rate(secs)
                row.samples[who].append(value)
                extra = ""
                if who == "paired":  # let replication catch up (untimed) so it does not slow the next run
                    g = asyncio.run(_display(arrays, "g1"))
                    row.backlogs.append(int((g.get("journal") or {}).get("bytes_used", 0)))
                    result, drain, g = asyncio.run(syncwait(arrays, "g1", args.sync_timeout))
                    row.drains.append(drain)
                    extra = (f"; journal held {row.backlogs[-1] / MiB:.0f} MiB at the end, drained in {drain:.2f} s "
                             f"({result}), state {g['state']}")
                    if result != "DONE" or g["state"] != "PAIR":
                        note = f"round {rnd} {row.name}: after the paired run PAIR_SYNCWAIT {result}, {brief(g)}"
                        row.notes.append(note)
                        warnings.append(note)
                        if g["state"] in ("PSUE", "PSUS"):
                            g = asyncio.run(resync_and_wait(arrays, "g1", args.copy_timeout))
                            warnings.append(f"  resynced: {brief(g)}")
                progress(f"round {rnd}/{args.rounds} {row.name:13} {who:8} {value:9.1f} {row.unit} "
                         f"({secs:.2f} s){extra}")
    return rows


async def _display(arrays: dict[str, Array], group: str) -> dict[str, Any]:
    async with Commands(arrays) as cmd:
        return await cmd.group(group)


def print_paired(rows: list[Row], args: argparse.Namespace) -> None:
    out(f"1. host writes, site-a LUN {PVOL} as P-VOL in PAIR (autonomous replication to site-b) vs unpaired "
        f"LUN {PLAIN}")
    out(f"   qemu-img bench -w --pattern=165, median of {args.rounds} alternating rounds; both regions prefilled")
    head = f"   {'workload':14} {'unit':4} {'count':>6} {'paired':>9} {'unpaired':>9} {'ratio':>6}  {'spread p/u':>10}  goal"
    out(head)
    out("   " + "-" * (len(head) - 3))
    for r in rows:
        ratio = r.median("paired") / r.median("unpaired")
        verdict = "met" if ratio >= PAIRED_GOAL else "NOT met"
        spread = f"{r.spread('paired'):.0%}/{r.spread('unpaired'):.0%}"
        out(f"   {r.name:14} {r.unit:4} {r.count:6} {r.median('paired'):9.1f} {r.median('unpaired'):9.1f} "
            f"{ratio:5.2f}x  {spread:>10}  >= {PAIRED_GOAL}x {verdict}")
    for r in rows:
        p = " ".join(f"{v:.1f}" for v in r.samples["paired"])
        u = " ".join(f"{v:.1f}" for v in r.samples["unpaired"])
        d = " ".join(f"{v:.2f}" for v in r.drains)
        j = " ".join(f"{v / MiB:.0f}" for v in r.backlogs)
        out(f"   {r.name}: paired [{p}] unpaired [{u}]")
        out(f"   {'':{len(r.name)}}  after each paired run: primary journal in use [{j}] MiB of "
            f"{args.journal_mib}, replication caught up (PAIR_SYNCWAIT) in [{d}] s")
        for n in r.notes:
            out(f"   ! {n}")
    out()


# --- 2. RPO lag under a steady write load --------------------------------------------------------


@dataclass
class LagResult:
    seconds: float = 0.0
    writes: int = 0
    late: int = 0
    latencies: list[float] = field(default_factory=list)
    samples: list[tuple[float, float | None, str, dict]] = field(default_factory=list)
    drain: float = 0.0
    drain_result: str = ""


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


async def lag_run(arrays: dict[str, Array], seconds: float, size: int) -> LagResult:
    from storaged.iscsi.initiator import IscsiSession

    res = LagResult()
    a = arrays["site-a"]
    sess = IscsiSession()
    await sess.login("127.0.0.1", a.port, iqn("site-a"), initiator=f"{INITIATOR}-writer")
    buf = os.urandom(LAG_CHUNK)
    stop = asyncio.Event()
    try:
        async with Commands(arrays) as cmd:
            t0 = time.monotonic()

            async def sampler() -> None:
                k = 1
                while True:
                    delay = t0 + k * LAG_SAMPLE - time.monotonic()
                    k += 1
                    if delay > 0:
                        try:
                            await asyncio.wait_for(stop.wait(), delay)
                            return
                        except TimeoutError:
                            pass
                    if stop.is_set():
                        return
                    g = await cmd.group("g1")
                    res.samples.append((time.monotonic() - t0, g.get("lag_seconds"), g["state"], g.get("behind") or {}))

            task = asyncio.get_running_loop().create_task(sampler())
            try:
                i = 0
                while True:
                    due = t0 + i * LAG_PERIOD
                    if due >= t0 + seconds:
                        break
                    now = time.monotonic()
                    if due > now:
                        await asyncio.sleep(due - now)
                    elif now - due > LAG_PERIOD:
                        res.late += 1
                    offset = (i * LAG_CHUNK) % size
                    w0 = time.monotonic()
                    r = await sess.scsi(PVOL, write16(offset // BLOCK, LAG_CHUNK // BLOCK), data_out=buf)
                    res.latencies.append(time.monotonic() - w0)
                    if r.status != 0:
                        raise BenchError(f"WRITE(16) at {offset} on site-a LUN {PVOL} failed: status {r.status} "
                                         f"sense key {r.sense_key:#x}")
                    i += 1
                res.writes = i
                res.seconds = time.monotonic() - t0
            finally:
                stop.set()
                await task
    finally:
        try:
            await sess.logout()
        except Exception:  # noqa: BLE001
            await sess.close()
    return res


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(p * len(s)) - 1)]


def print_lag(res: LagResult, args: argparse.Namespace) -> None:
    target = LAG_CHUNK / LAG_PERIOD
    rate = res.writes * LAG_CHUNK / res.seconds if res.seconds else 0.0
    lags = [s[1] for s in res.samples if s[1] is not None]
    states = sorted({s[2] for s in res.samples})
    out(f"2. RPO lag: {LAG_CHUNK // KiB} KiB WRITE(16) to the P-VOL every {LAG_PERIOD * 1000:g} ms "
        f"(target {target / 1e6:.2f} MB/s = {target / MiB:.0f} MiB/s) for {args.lag_seconds:g} s, "
        f"PAIR_DISPLAY on site-b every {LAG_SAMPLE:g} s")
    lat = sorted(res.latencies)
    out(f"   achieved write rate     {rate / 1e6:6.2f} MB/s ({res.writes} writes in {res.seconds:.2f} s, "
        f"{res.late} started more than one period late)")
    if lat:
        out(f"   write latency           median {statistics.median(lat) * 1000:.2f} ms, p99 "
            f"{pct(lat, 0.99) * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms")
    if lags:
        med, p95, mx = statistics.median(lags), pct(lags, 0.95), max(lags)
        verdict = ", ".join(f"{n} {'met' if v < LAG_GOAL else 'NOT met'}" for n, v in
                            (("median", med), ("p95", p95), ("max", mx)))
        out(f"   lag_seconds             median {med:.3f} s, p95 {p95:.3f} s, max {mx:.3f} s "
            f"({len(lags)} samples; goal < {LAG_GOAL:g} s: {verdict})")
    else:
        out("   lag_seconds             no samples with a lag value")
    missing = len(res.samples) - len(lags)
    if missing:
        out(f"   ! {missing} samples had lag_seconds null (link down as seen by site-b)")
    behind = [s[3].get("bytes", 0) for s in res.samples]
    entries = [s[3].get("entries", 0) for s in res.samples]
    if behind:
        out(f"   behind (not yet restored) max {max(entries)} entries / {max(behind) / MiB:.1f} MiB; "
            f"states seen: {', '.join(states)}")
    out(f"   after the load stopped, PAIR_SYNCWAIT returned {res.drain_result} in {res.drain:.2f} s")
    out("   samples (t s: lag s): " + " ".join(f"{t:.1f}:{'-' if v is None else f'{v:.2f}'}"
                                            for t, v, _, _ in res.samples))
    out()


# --- 3. initial copy against a plain TCP stream ------------------------------------------------


async def _tcp_sink() -> None:
    """Child process: count the bytes of each connection until EOF, answer with the count."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            chunk = await reader.read(MiB)
            if not chunk:
                break
            n += len(chunk)
        writer.write(struct.pack("!Q", n))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def _tcp_send(port: int, total: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf = os.urandom(MiB)
    t0 = time.perf_counter()
    for _ in range(total // MiB):
        writer.write(buf)
        await writer.drain()
    writer.write_eof()
    got = struct.unpack("!Q", await reader.readexactly(8))[0]
    secs = time.perf_counter() - t0
    writer.close()
    if got != total:
        raise BenchError(f"TCP baseline: the receiver counted {got} bytes, sent {total}")
    return secs


def tcp_baseline(runs: int, total: int, children: list[subprocess.Popen[str]]) -> list[float]:
    """A receiver process and this process as the sender: 1 MiB writes, MB/s per run."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--tcp-sink"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    children.append(proc)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.strip().isdigit():
            raise BenchError(f"TCP baseline: the receiver did not start (exit status {proc.poll()})")
        port = int(line)
        rates = []
        for i in range(runs):
            secs = run_fast_loop(_tcp_send(port, total))
            rates.append(total / secs / 1e6)
            progress(f"TCP stream run {i + 1}/{runs}: {total // MiB} MiB in {secs:.2f} s = {rates[-1]:.0f} MB/s")
        return rates
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def write_holey(arrays: dict[str, Array], size: int) -> int:
    """Write WRITTEN_FRACTION of site-a's LUN 6 in scattered 1 MiB extents (random data)."""
    from storaged.iscsi.initiator import IscsiSession

    n = round(size // MiB * WRITTEN_FRACTION)
    extents = sorted(random.Random(6).sample(range(size // MiB), n))
    sess = IscsiSession()
    await sess.login("127.0.0.1", arrays["site-a"].port, iqn("site-a"), initiator=f"{INITIATOR}-filler")
    try:
        for e in extents:
            r = await sess.scsi(HOLEY, write16(e * MiB // BLOCK, MiB // BLOCK), data_out=os.urandom(MiB))
            if r.status != 0:
                raise BenchError(f"WRITE(16) of extent {e} on site-a LUN {HOLEY} failed: status {r.status}")
    finally:
        await sess.logout()
    return n * MiB


def print_copies(copies: list[CopyResult], tcp: list[float]) -> None:
    base = statistics.median(tcp) if tcp else 0.0
    out("3. initial copy: PAIR_CREATE on site-b until PAIR_DISPLAY shows PAIR (polled every 0.1 s)")
    head = (f"   {'P-VOL':34} {'volume':>9} {'copied':>9} {'time':>8} {'MB/s vol':>9} {'MB/s data':>10} "
            f"{'data/TCP':>9}")
    out(head)
    out("   " + "-" * (len(head) - 3))
    for c in copies:
        if c.seconds is None:
            out(f"   {c.label:34} {c.size / MiB:7.0f}Mi {c.mapped / MiB:7.0f}Mi    never reached PAIR: "
                f"{brief(c.last)}")
            continue
        vol, data = c.size / c.seconds / 1e6, c.mapped / c.seconds / 1e6
        ratio = f"{data / base:8.2f}x" if base else "-"
        out(f"   {c.label:34} {c.size / MiB:7.0f}Mi {c.mapped / MiB:7.0f}Mi {c.seconds:7.2f}s {vol:9.1f} "
            f"{data:10.1f} {ratio:>9}")
    runs = " ".join(f"{v:.0f}" for v in tcp)
    out(f"   plain TCP stream on 127.0.0.1 ({loop_name()}, 1 MiB writes, receiver in another process): "
        f"median {base:.0f} MB/s [{runs}]")
    out("   'copied' = data extents of the P-VOL file (SEEK_DATA), the bytes a hole-skipping copy must move")
    out()


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating paired/unpaired rounds (default 3)")
    ap.add_argument("--count-1m", type=int, default=1000, help="qemu-img bench -c for 1 MiB QD8 (default 1000)")
    ap.add_argument("--count-4k", type=int, default=40000, help="qemu-img bench -c for 4 KiB QD32 (default 40000)")
    ap.add_argument("--lag-seconds", type=float, default=15.0, help="length of the 20 MiB/s load (default 15)")
    ap.add_argument("--size-mib", type=int, default=1024, help="P-VOL/S-VOL and data LUN size (default 1024)")
    ap.add_argument("--journal-mib", type=int, default=1024, help="journal LUN size (default 1024)")
    ap.add_argument("--tcp-runs", type=int, default=3, help="runs of the plain TCP stream (default 3)")
    ap.add_argument("--copy-timeout", type=float, default=900.0,
                    help="give up waiting for PAIR after this many seconds (a hang guard, default 900)")
    ap.add_argument("--sync-timeout", type=float, default=300.0, help="PAIR_SYNCWAIT timeout (default 300)")
    ap.add_argument("--dir", default="/var/tmp", help="where the work directory goes (needs ~7 GiB; default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs and LUN files)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.size_mib < 16 or args.journal_mib < 16:
        ap.error("--rounds >= 1, --size-mib and --journal-mib >= 16")
    return args


def on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: do not interrupt the cleanup
    raise Terminated()


def on_sigint(signum: int, frame: object) -> None:
    """Raise right where we are, also inside asyncio.run (whose own handler only cancels the main
    task, and a cancellation can be lost inside a library): the same cleanup as for SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt()


def describe_tree() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{f' + {len(dirty)} modified files' if dirty else ''}"


def bench(args: argparse.Namespace, workdir: Path, arrays: dict[str, Array], children: list,
          warnings: list[str], failures: list[str]) -> None:
    size, jsize = args.size_mib * MiB, args.journal_mib * MiB
    la, lb = free_port(), free_port()
    arrays["site-b"] = Array(workdir, "site-b", site_config("site-b", "site-a", lb, la, args.size_mib, args.journal_mib))
    arrays["site-a"] = Array(workdir, "site-a", site_config("site-a", "site-b", la, lb, args.size_mib, args.journal_mib))
    for arr in arrays.values():
        arr.start()
    for arr in arrays.values():
        arr.port = int(arr.wait_log(r"iSCSI portal listening on [0-9.]+:(\d+)").group(1))
        progress(f"{arr.name} pid {arr.proc.pid} on 127.0.0.1:{arr.port} (log {arr.log})")  # type: ignore[union-attr]
    arrays["site-a"].wait_log(r"remote link to site-b is up")
    arrays["site-b"].wait_log(r"remote link to site-a is up")
    a, b = arrays["site-a"], arrays["site-b"]

    out(f"bench_replication: storaged {describe_tree()}, {os.cpu_count()} CPUs, P-VOL/data LUNs {args.size_mib} MiB, "
        f"journals {args.journal_mib} MiB, rounds {args.rounds}")
    out()
    # untimed: the benchmark regions and both journals hold data, so timed writes are overwrites
    for arr, lun, n in ((a, PVOL, size), (a, PLAIN, size), (a, PJNL, jsize), (b, PJNL, jsize)):
        prefill(arr, lun, n)

    setup = asyncio.run(create_and_wait(arrays, "g1", PVOL, PVOL, f"full, LUN {PVOL} (g1, set-up)", args.copy_timeout))
    if setup.seconds is None:
        raise BenchError(pair_problem(setup, arrays, "g1"))

    rows = paired_vs_unpaired(args, arrays, warnings)
    print_paired(rows, args)

    result, secs, g = asyncio.run(syncwait(arrays, "g1", args.sync_timeout))
    if g["state"] != "PAIR":
        raise BenchError(f"group g1 is not in PAIR before the lag run: {brief(g)}")
    progress(f"lag run: {args.lag_seconds:g} s at {LAG_CHUNK / LAG_PERIOD / MiB:.0f} MiB/s")
    lag = asyncio.run(lag_run(arrays, args.lag_seconds, size))
    lag.drain_result, lag.drain, g = asyncio.run(syncwait(arrays, "g1", args.sync_timeout))
    progress(f"lag run done: {lag.writes} writes, {len(lag.samples)} samples, drained {lag.drain_result} "
             f"in {lag.drain:.2f} s; {brief(g)}")
    print_lag(lag, args)

    asyncio.run(delete_pair(arrays, "g1"))
    written = asyncio.run(write_holey(arrays, size))
    progress(f"wrote {written // MiB} MiB in scattered 1 MiB extents on site-a LUN {HOLEY}; "
             f"{mapped_bytes(a.file(HOLEY)) // MiB} MiB mapped in its file")
    tcp = tcp_baseline(args.tcp_runs, GiB, children)
    copies = [setup]
    for group, lun, label in (("holey", HOLEY, f"90% holes, LUN {HOLEY}"), ("full", PLAIN, f"full, LUN {PLAIN}")):
        c = asyncio.run(create_and_wait(arrays, group, lun, lun, label, args.copy_timeout))
        copies.append(c)
        if c.seconds is None:
            failures.append(pair_problem(c, arrays, group))
        else:
            s_mapped = mapped_bytes(b.file(lun))
            if s_mapped != c.mapped:
                warnings.append(f"{label}: the S-VOL file has {s_mapped} bytes in data extents, the P-VOL {c.mapped}")
        asyncio.run(delete_pair(arrays, group))
    print_copies(copies, tcp)
    for arr in arrays.values():
        arr.check_alive()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--tcp-sink"]:
        try:
            run_fast_loop(_tcp_sink())
        except KeyboardInterrupt:
            pass
        return 0
    args = parse_args(argv)
    if not shutil.which("qemu-img"):
        print("bench_replication: FAILED: qemu-img not found (./setup.sh --test)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)
    workdir = Path(tempfile.mkdtemp(prefix="bench-replication.", dir=args.dir))
    progress(f"work directory {workdir}")
    arrays: dict[str, Array] = {}
    children: list[subprocess.Popen[str]] = []
    warnings: list[str] = []
    failures: list[str] = []
    keep_logs = False
    try:
        bench(args, workdir, arrays, children, warnings, failures)
        for w in warnings:
            out(f"warning: {w}")
        if failures:
            keep_logs = True
            for f in failures:
                print(f"bench_replication: FAILED: {f}", file=sys.stderr)
            print(f"bench_replication: array logs in {workdir}", file=sys.stderr)
            return 1
        return 0
    except BenchError as exc:
        keep_logs = True
        print(f"bench_replication: FAILED: {exc}\nbench_replication: array logs in {workdir}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - same report for anything unexpected
        keep_logs = True
        import traceback

        traceback.print_exc()
        print(f"bench_replication: FAILED: {type(exc).__name__}: {exc}\n"
              f"bench_replication: array logs in {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_replication: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("bench_replication: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish undisturbed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in ("site-a", "site-b"):
            if name in arrays:
                arrays[name].stop()
        if args.keep:
            progress(f"work directory kept (--keep): {workdir}")
        elif keep_logs:
            for img in workdir.rglob("*.img"):
                img.unlink(missing_ok=True)
            progress(f"work directory kept for its logs (LUN files deleted): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

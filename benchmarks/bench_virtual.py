#!/usr/bin/env python3
"""Virtual volume throughput against the same LUN served directly, and command round trips.

Starts two storaged arrays on loopback (site-a maps site-b's LUN 1 as its LUN 4, and site-b's
command device as its LUN 3), then in one run:

* ``qemu-img bench`` 1 MiB QD8 and 4 KiB QD32, reads and writes, alternating between the virtual
  volume on site-a and the LUN on site-b directly; prints medians and the ratio (goal >= 0.7x at 1 MiB);
* the round trip of an ``info`` command (write the command block, read the edited data, release)
  on site-a's own command device and on site-b's through site-a: median and p99 in milliseconds.

Usage: .venv/bin/python benchmarks/bench_virtual.py [--rounds N] [--quick] [--commands N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hostctl.client import CommandDeviceClient  # noqa: E402
from hostctl.device import IscsiDevice  # noqa: E402

SECRET = "bench-link-secret-0123456789"
WORKLOADS = [  # name, qemu-img bench args, count, quick count, unit
    ("read-1m-qd8", ["-s", "1M", "-d", "8"], 1000, 400, "MB/s"),
    ("write-1m-qd8", ["-s", "1M", "-d", "8", "-w", "--pattern=165"], 1000, 400, "MB/s"),
    ("read-4k-qd32", ["-s", "4k", "-d", "32"], 40000, 15000, "IOPS"),
    ("write-4k-qd32", ["-s", "4k", "-d", "32", "-w", "--pattern=165"], 40000, 15000, "IOPS"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site(name: str, peer: str, link: int, peer_link: int) -> dict:
    return {"array": {"name": name},
            "remote": {"listen": f"127.0.0.1:{link}", "peers": [{"name": peer, "address": f"127.0.0.1:{peer_link}",
                                                                 "secret": SECRET}]},
            "targets": [{"name": f"iqn.2026-11.io.storaged:{name}", "luns": [
                {"lun": 0, "size": "16MiB", "file": "data0.img"},
                {"lun": 1, "size": "2GiB", "file": "data1.img"},
                {"lun": 2, "size": "4MiB", "command_device": True},
                {"lun": 3, "map": {"array": peer, "lun": 2}},
                {"lun": 4, "map": {"array": peer, "lun": 1}}]}]}


class Array:
    def __init__(self, workdir: Path, name: str, cfg: dict) -> None:
        self.name = name
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "storaged", "--config", str(path), "--listen",
                                      "127.0.0.1:0", "--data-dir", str(workdir / name)],
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, cwd=str(REPO))
        self.port = 0

    def wait(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_path.read_text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"bench_virtual: {self.name} never logged {pattern!r}; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def bench(url: str, args: list[str], count: int) -> float:
    out = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", "-n", "-c", str(count), *args, url],
                         capture_output=True, text=True, timeout=300)
    m = re.search(r"Run completed in ([0-9.]+) seconds", out.stdout)
    if out.returncode or not m:
        raise SystemExit(f"bench_virtual: qemu-img bench failed on {url}: {out.stderr.strip()[-300:]}")
    return float(m.group(1))


async def round_trips(url: str, n: int) -> list[float]:
    dev = await IscsiDevice.open(url, initiator="iqn.2026-11.io.storaged:bench")
    try:
        client = CommandDeviceClient(dev, initiator="iqn.2026-11.io.storaged:bench")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.run(2, {})  # ARRAY_INFO
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        await dev.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--commands", type=int, default=300, help="info round trips per command device")
    args = ap.parse_args()
    if not shutil.which("qemu-img"):
        raise SystemExit("bench_virtual: qemu-img not found (./setup.sh --test)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-virtual."))
    la, lb = free_port(), free_port()
    b = Array(workdir, "site-b", site("site-b", "site-a", lb, la))
    a = Array(workdir, "site-a", site("site-a", "site-b", la, lb))
    try:
        b.port = int(b.wait(r"iSCSI portal listening on [0-9.]+:(\d+)").group(1))
        a.port = int(a.wait(r"iSCSI portal listening on [0-9.]+:(\d+)").group(1))
        a.wait(r"virtual volume of site-b LUN 1")
        virtual = f"iscsi://127.0.0.1:{a.port}/iqn.2026-11.io.storaged:site-a/4"
        direct = f"iscsi://127.0.0.1:{b.port}/iqn.2026-11.io.storaged:site-b/1"
        print(f"virtual: {virtual}\ndirect:  {direct}", flush=True)
        bench(direct, ["-s", "1M", "-d", "8", "-w", "--pattern=165"], 1024)  # prefill 1 GiB: overwrites only
        print(f"\n{'workload':16} {'unit':>5} {'virtual':>10} {'direct':>10} {'ratio':>7}")
        for name, wargs, count, quick, unit in WORKLOADS:
            n = quick if args.quick else count
            vals: dict[str, list[float]] = {"virtual": [], "direct": []}
            for _ in range(args.rounds):
                for who, url in (("virtual", virtual), ("direct", direct)):
                    secs = bench(url, wargs, n)
                    size = 1 << 20 if "1m" in name else 4096
                    vals[who].append(n * size / secs / 1e6 if unit == "MB/s" else n / secs)
            v, d = statistics.median(vals["virtual"]), statistics.median(vals["direct"])
            print(f"{name:16} {unit:>5} {v:10.0f} {d:10.0f} {v / d:6.2f}x", flush=True)
        local_cd = f"iscsi://127.0.0.1:{a.port}/iqn.2026-11.io.storaged:site-a/2"
        peer_cd = f"iscsi://127.0.0.1:{a.port}/iqn.2026-11.io.storaged:site-a/3"
        print(f"\ncommand round trip (info: write command, read edited data, release), {args.commands} each:")
        for label, url in (("site-a's own command device", local_cd), ("site-b's, through site-a", peer_cd)):
            times = sorted(asyncio.run(round_trips(url, args.commands)))
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"  {label:28} median {statistics.median(times):6.2f} ms   p99 {p99:6.2f} ms")
        return 0
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""The two-site lab on loopback: arrays site-a and site-b, and hostctl driving both through site-a.

``storaged-lab`` (or ``python -m storaged.lab``) starts both daemons from ``configs/``, waits for
their remote link, shows ``hostctl info`` for each array as seen from a host attached to site-a
only, then stays in the foreground until Ctrl-C, when it stops both arrays cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from storaged import lab_metrics

REPO = Path(__file__).resolve().parents[1]


class Daemon:
    def __init__(self, name: str, config: Path, log_dir: Path) -> None:
        self.name = name
        self.config = config
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.link_up = threading.Event()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "storaged", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(REPO))
        threading.Thread(target=self._pump, args=(log,), daemon=True).start()

    def _pump(self, log: BinaryIO) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            log.write(line)
            log.flush()
            text = line.decode(errors="replace")
            if "iSCSI portal listening on" in text:
                self.ready.set()
            if "remote link to" in text and " is up" in text:
                self.link_up.set()
            if " ERROR " in text or "Traceback" in text:
                sys.stderr.write(f"[{self.name}] {text}")
        self.ready.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def hostctl(host_config: Path, *args: str) -> int:
    shown = host_config.relative_to(REPO) if host_config.is_relative_to(REPO) else host_config
    print(f"\n$ hostctl --config {shown} {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "hostctl", "--config", str(host_config), *args], cwd=str(REPO))


def write_to_pvol(url_host: str, port: int, target: str, lun: int, size: int) -> None:
    """Some host I/O on the P-VOL, written with the project's own initiator (no tools needed)."""
    import asyncio

    from storaged.iscsi.initiator import IscsiSession

    async def go() -> None:
        s = IscsiSession()
        await s.login(url_host, port, target, initiator="iqn.2026-11.io.storaged:host-a")
        chunk = 1 << 20
        for off in range(0, size, chunk):
            cdb = bytes([0x8A, 0]) + (off // 512).to_bytes(8, "big") + (chunk // 512).to_bytes(4, "big") + b"\0\0"
            r = await s.scsi(lun, cdb, data_out=os.urandom(chunk))
            if r.status:
                raise RuntimeError(f"write failed with SCSI status {r.status}")
        await s.logout()

    asyncio.run(go())


def replication_demo(host: Path) -> int:
    """Form a pair (site-a LUN 0 -> site-b LUN 0, journals on LUN 5), write, wait, show it."""
    if subprocess.call([sys.executable, "-m", "hostctl", "--config", str(host), "--array", "site-b", "pairdisplay",
                        "-g", "lab"], cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        rc = hostctl(host, "paircreate", "-g", "lab", "--pvol", "site-a:0", "--svol", "site-b:0", "--pjnl", "5",
                     "--sjnl", "5", "--wait")
        if rc:
            return rc
    import yaml

    from storaged.iscsi.initiator import IscsiUrl

    url = IscsiUrl.parse(yaml.safe_load(host.read_text())["local"]["command_device"])
    print("\n$ (host-a writes 16 MiB of random data to site-a LUN 0, the P-VOL)", flush=True)
    write_to_pvol(url.host, url.port, url.target, 0, 16 << 20)
    return (hostctl(host, "--array", "site-b", "pairsyncwait", "-g", "lab")
            or hostctl(host, "--array", "site-b", "pairdisplay", "-g", "lab"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storaged-lab", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=str(REPO / "configs"), help="folder with site-a.yaml, site-b.yaml, host-a.yaml")
    ap.add_argument("--once", action="store_true", help="show the demo, then stop the arrays (no foreground)")
    ap.add_argument("--logs", default=str(REPO / "lab-data"), help="where the arrays' logs go")
    args = ap.parse_args(argv)
    configs = Path(args.configs).resolve()
    log_dir = Path(args.logs).resolve()
    arrays = [Daemon("site-a", configs / "site-a.yaml", log_dir), Daemon("site-b", configs / "site-b.yaml", log_dir)]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        for d in arrays:
            d.start()
        for d in arrays:
            if not d.ready.wait(30) or not d.alive():
                print(f"storaged-lab: {d.name} did not start; see {d.log_path}", file=sys.stderr)
                return 1
        for d in arrays:
            if not d.link_up.wait(15):
                print(f"storaged-lab: {d.name}'s remote link did not come up; see {d.log_path}", file=sys.stderr)
                return 1
        time.sleep(0.5)  # let the virtual volumes attach
        print(f"storaged-lab: site-a and site-b are up ({configs.name}/site-a.yaml, site-b.yaml); logs in {log_dir}/",
              flush=True)
        host = configs / "host-a.yaml"
        rc = hostctl(host, "info")
        rc = rc or hostctl(host, "--array", "site-b", "info")
        rc = rc or hostctl(host, "--array", "site-b", "link")
        rc = rc or replication_demo(host)
        if rc:
            print(f"storaged-lab: hostctl failed (exit {rc})", file=sys.stderr)
            return rc
        if any([lab_metrics.show(d.name, d.config) for d in arrays]):
            return 1  # each failed scrape said why
        if args.once:
            return 0
        print("\nstoraged-lab: running in the foreground; Ctrl-C stops both arrays.", flush=True)
        while not stopping.is_set() and all(d.alive() for d in arrays):
            stopping.wait(1.0)
        return 0 if all(d.alive() for d in arrays) or stopping.is_set() else 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("storaged-lab: stopping", file=sys.stderr)
        for d in arrays:
            d.stop()


if __name__ == "__main__":
    sys.exit(main())

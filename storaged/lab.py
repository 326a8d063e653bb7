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

    def _pump(self, log) -> None:  # type: ignore[no-untyped-def]
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
    print(f"\n$ hostctl --config {host_config.relative_to(REPO)} {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "hostctl", "--config", str(host_config), *args], cwd=str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storaged-lab", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=str(REPO / "configs"), help="folder with site-a.yaml, site-b.yaml, host-a.yaml")
    ap.add_argument("--once", action="store_true", help="show the demo, then stop the arrays (no foreground)")
    args = ap.parse_args(argv)
    configs = Path(args.configs).resolve()
    log_dir = REPO / "lab-data"
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
        print("storaged-lab: site-a on 127.0.0.1:3260 and site-b on 127.0.0.1:3261 are up; "
              f"logs in {log_dir.relative_to(REPO)}/", flush=True)
        host = configs / "host-a.yaml"
        rc = hostctl(host, "info")
        rc = rc or hostctl(host, "--array", "site-b", "info")
        rc = rc or hostctl(host, "--array", "site-b", "link")
        if rc:
            print(f"storaged-lab: hostctl failed (exit {rc})", file=sys.stderr)
            return rc
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

"""Start and stop real storaged processes for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
_LISTEN = re.compile(r"iSCSI portal listening on (\S+):(\d+)")


class StoragedProcess:
    """A storaged child process on a free 127.0.0.1 port, with its log captured."""

    def __init__(self, data_dir: Path, config: dict | None = None, extra_args: list[str] | None = None,
                 wrapper: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.config_path: Path | None = None
        args = [sys.executable, "-m", "storaged", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        if config is not None:
            self.config_path = data_dir.parent / f"{data_dir.name}.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
            args += ["--config", str(self.config_path)]
        args += extra_args or []
        self.args = (wrapper or []) + args
        self.env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self.host = "127.0.0.1"
        self.port = 0

    def start(self, timeout: float = 20.0) -> StoragedProcess:
        self.log_lines = []
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, cwd=str(REPO))
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log_lines.append(line)
                m = _LISTEN.search(line)
                if m and not found.is_set():
                    self.port = int(m.group(2))
                    found.set()
            found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not found.wait(timeout) or self.port == 0:
            self.kill()
            raise RuntimeError("storaged did not start:\n" + "".join(self.log_lines))
        return self

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        """True once ``text`` is in the log: lines arrive through a pipe and a reader thread, so a line
        the daemon wrote before answering may be read after the answer."""
        return wait_for(lambda: text in self.log, timeout)

    def _drain_log(self) -> None:
        """After the process ended: wait for the reader thread to take the last lines."""
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(10)

    def url(self, target: str = "iqn.2026-11.io.storaged:default", lun: int = 0, auth: str = "") -> str:
        return f"iscsi://{auth}{self.host}:{self.port}/{target}/{lun}"

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self._drain_log()
        return rc

    def kill(self) -> None:
        """kill -9: no chance to sync or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._drain_log()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

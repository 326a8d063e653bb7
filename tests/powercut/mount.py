"""Mount, cut and unmount the volatile file system (``volatile_fs.py``) from a test."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def require_fuse() -> None:
    """Fail (never skip) with the way out when FUSE cannot run here."""
    problems = []
    if os.geteuid() != 0:
        problems.append("FUSE mounts here need root")
    if not os.path.exists("/dev/fuse"):
        problems.append("no /dev/fuse")
    if shutil.which("umount") is None:
        problems.append("no umount")
    try:
        import fuse  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: fusepy found no libfuse.so.2
        problems.append(f"fusepy unusable ({exc})")
    if problems:
        pytest.fail("; ".join(problems) + ": run ./setup.sh --test (installs libfuse2 and fusepy)")


@dataclass(frozen=True)
class CutStats:
    files: int
    blocks: int  # unsynced 4 KiB blocks at the cut
    kept: int  # of those, written back anyway (a reordering cache)

    @property
    def dropped(self) -> int:
        return self.blocks - self.kept


class VolatileMount:
    """``mount`` served by a volatile_fs process over ``backing``; ``cut()`` is a power cut,
    ``start()`` after it is the power coming back (a new file system over what reached the disk)."""

    def __init__(self, mount: Path, backing: Path) -> None:
        self.mount, self.backing = mount, backing
        mount.mkdir(parents=True, exist_ok=True)
        backing.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []

    def start(self, timeout: float = 15.0) -> VolatileMount:
        assert self.proc is None, "already mounted"
        self.lines = queue.Queue()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.powercut.volatile_fs", str(self.mount),
                                      str(self.backing)], cwd=str(REPO), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        self._expect("ready", timeout)
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line)
            self.lines.put(line.strip())
        self.lines.put("")  # EOF

    def _expect(self, prefix: str, timeout: float) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"volatile_fs: no {prefix!r} within {timeout} s:\n{''.join(self.log)}") from None
            if line.startswith(prefix):
                return line
            if line == "" and self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"volatile_fs exited ({self.proc.returncode}):\n{''.join(self.log)}")

    def _send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def dirty(self) -> tuple[int, int]:
        self._send("dirty")
        words = dict(w.split("=") for w in self._expect("dirty", 10).split()[1:])
        return int(words["files"]), int(words["blocks"])

    def cut(self, keep: float = 0.0, seed: int = 0) -> CutStats:
        """The power cut: unsynced blocks dropped (each kept with probability ``keep``), the file
        system gone, the mount point unmounted. Kill the processes using it first."""
        self._send(f"cut {keep} {seed}")
        words = dict(w.split("=") for w in self._expect("cut", 30).split()[1:])
        assert self.proc is not None
        self.proc.wait(10)
        self.proc = None
        self._umount()
        return CutStats(int(words["files"]), int(words["blocks"]), int(words["kept"]))

    def stop(self) -> None:
        """Clean unmount (cached blocks written back, as at a shutdown); kills the process if stuck."""
        if self.proc is None:
            self._umount()
            return
        subprocess.run(["umount", str(self.mount)], check=False, capture_output=True)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._umount()

    def kill(self) -> None:
        """For finally: whatever state it is in, no process and no mount left behind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self._umount()

    def _umount(self) -> None:
        if os.path.ismount(self.mount) or _listed(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], check=False, capture_output=True)


def _listed(mount: Path) -> bool:
    """A dead FUSE mount fails stat (ENOTCONN), so os.path.ismount misses it: ask /proc/mounts."""
    target = str(mount).encode("unicode_escape").decode().replace(" ", "\\040")
    with open("/proc/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)

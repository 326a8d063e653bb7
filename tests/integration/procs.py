"""Find the processes a test started, however they were wrapped (strace, ip netns exec, a launcher).

A test must stop every process it starts. A wrapper can hide one: strace detaches from its tracee
when it is signalled, a launcher killed on a timeout leaves its children to PID 1. These helpers
read /proc so a test can stop, and check for, what it cannot reach through its Popen object.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path


def _stat(pid: str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()


def _live(match: Callable[[str, list[str]], bool]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = _stat(entry.name)
            if stat[0] != "Z" and match(entry.name, stat):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def processes_using(path: Path) -> list[int]:
    """Live processes whose command line mentions ``path`` (a test's tmp_path: only its own)."""
    needle = str(path).encode()
    return _live(lambda pid, _: needle in (Path("/proc") / pid / "cmdline").read_bytes())


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    return _live(lambda _, stat: int(stat[1]) == pid)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (a child started with start_new_session=True)."""
    return _live(lambda _, stat: int(stat[2]) == pgid)


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

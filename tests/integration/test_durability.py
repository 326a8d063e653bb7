"""Acknowledged writes survive kill -9, and the sync really happens before the acknowledgement."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiSession

from .conftest import TARGET, small_config
from .daemon import StoragedProcess
from .procs import children, kill_all, processes_using

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def write10(lba: int, blocks: int, fua: bool = False) -> bytes:
    return bytes([0x2A, 0x08 if fua else 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


SYNC_CACHE10 = bytes([0x35] + [0] * 9)


async def test_fua_and_sync_cache_writes_survive_kill_9(tmp_path: Path) -> None:
    proc = StoragedProcess(tmp_path / "data", small_config()).start()
    try:
        s = IscsiSession()
        await s.login("127.0.0.1", proc.port, TARGET)
        written: dict[int, bytes] = {}
        for i in range(16):
            payload = os.urandom(4096)
            r = await s.scsi(0, write10(i * 64, 8, fua=True), data_out=payload)
            assert r.status == 0
            written[i * 64] = payload
        for i in range(16):
            payload = os.urandom(4096)
            assert (await s.scsi(0, write10(5000 + i * 8, 8), data_out=payload)).status == 0
            written[5000 + i * 8] = payload
        assert (await s.scsi(0, SYNC_CACHE10)).status == 0
        proc.kill()  # no SIGTERM: nothing gets a chance to flush
        await s.close()
        proc.start()
        s2 = IscsiSession()
        await s2.login("127.0.0.1", proc.port, TARGET)
        for lba, payload in written.items():
            r = await s2.scsi(0, read10(lba, 8), read_length=4096)
            assert r.status == 0 and r.data == payload, f"LBA {lba} lost"
        await s2.logout()
    finally:
        proc.stop()


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Every process a test starts is stopped by the test: after it, nothing runs on its tmp_path.

    A process a wrapper leaves behind (strace detaches from its tracee when it is signalled, and the
    orphan is adopted by PID 1) fails the test, and is killed so the failure leaks nothing."""
    yield
    left = processes_using(tmp_path)
    kill_all(left)
    assert not left, f"processes outlived the test: {left}"


def _stop_traced(strace: StoragedProcess, timeout: float = 20.0) -> None:
    """Stop storaged under strace: SIGTERM the traced storaged itself (strace exits with it).

    Signalling strace would only make it detach and exit, leaving storaged running."""
    if strace.proc is None:
        return
    kill_all(children(strace.proc.pid), signal.SIGTERM)
    try:
        strace.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_all(children(strace.proc.pid))
    strace.stop()


_TS = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\d+\.\d+)\s+(.*)$")


def _sync_completions(trace: str, lun_file: str) -> list[float]:
    """Times at which an fdatasync/fsync of the LUN file returned, from `strace -f -ttt -T -y`."""
    done: list[float] = []
    pending: set[str] = set()
    for line in trace.splitlines():
        m = _TS.match(line)
        if not m:
            continue
        ts, rest = float(m.group(1)), m.group(2)
        pid = line.split()[1] if line.startswith("[pid") else line.split()[0]
        if re.match(r"f(data)?sync\(", rest) and lun_file in rest:
            if "<unfinished" in rest:
                pending.add(pid)
            elif rest.rstrip().endswith(">") and "= 0" in rest:
                dur = float(rest.rsplit("<", 1)[1].rstrip(">"))
                done.append(ts + dur)
        elif re.match(r"<\.\.\. f(data)?sync resumed>", rest) and pid in pending and "= 0" in rest:
            pending.discard(pid)
            done.append(ts)
    return done


async def test_strace_shows_sync_before_each_fua_and_sync_cache_response(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.fail("strace missing: run ./setup.sh --test")
    trace_file = tmp_path / "strace.txt"
    proc = StoragedProcess(tmp_path / "data", small_config(),
                           wrapper=["strace", "-f", "-ttt", "-T", "-y", "-e", "trace=fsync,fdatasync",
                                    "-o", str(trace_file)]).start(timeout=60)
    lun_file = str(tmp_path / "data" / "lun0.img")
    try:
        s = IscsiSession()
        await s.login("127.0.0.1", proc.port, TARGET)
        windows: dict[str, list[tuple[float, float]]] = {"fua": [], "sync": [], "plain": []}
        for i in range(6):
            t0 = time.time()
            assert (await s.scsi(0, write10(i * 8, 8, fua=True), data_out=os.urandom(4096))).status == 0
            windows["fua"].append((t0, time.time()))
            t0 = time.time()
            assert (await s.scsi(0, write10(100 + i * 8, 8), data_out=os.urandom(4096))).status == 0
            windows["plain"].append((t0, time.time()))
            t0 = time.time()
            assert (await s.scsi(0, SYNC_CACHE10)).status == 0
            windows["sync"].append((t0, time.time()))
        await s.logout()
    finally:
        _stop_traced(proc)
    done = _sync_completions(trace_file.read_text(), lun_file)
    assert done, "no fdatasync of the LUN file in the trace"

    def synced_within(window: tuple[float, float]) -> bool:
        return any(window[0] <= t <= window[1] for t in done)

    assert all(synced_within(w) for w in windows["fua"]), "a FUA write was acknowledged before its sync"
    assert all(synced_within(w) for w in windows["sync"]), "SYNCHRONIZE CACHE answered before its sync"
    # control: plain writes are not synced, so the check above is able to fail
    assert not any(synced_within(w) for w in windows["plain"])

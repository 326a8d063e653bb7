"""A real block device whose I/O goes over iSCSI: qemu-storage-daemon exports an iscsi:// LUN as a
FUSE file and losetup turns it into /dev/loopN (no kernel iSCSI initiator needed).

With ``direct_io`` the loop device does direct I/O on the FUSE file. Buffered, an O_DIRECT read of
/dev/loopN can be served from the FUSE file's page cache, which a real iSCSI disk never does: a
command device then "read back the command block as written" (a flaky CI failure). Direct, it reads
what the LUN holds, but mkfs.ext4 on it loses its journal (seen against tgtd too: Debian 12's
qemu-storage-daemon FUSE export), so file system tests keep buffered I/O (one writer, no surprise)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storaged.iscsi.initiator import IscsiUrl


def require_block_devices() -> None:
    if os.geteuid() != 0:
        pytest.skip("losetup and FUSE mounts need root")
    missing = [t for t in ("qemu-storage-daemon", "losetup") if shutil.which(t) is None]
    if missing or not os.path.exists("/dev/fuse"):
        pytest.fail(f"missing {missing or '/dev/fuse'}: run ./setup.sh --test")


@contextlib.contextmanager
def iscsi_block_device(url: str, workdir: Path, name: str = "lun", direct_io: bool = False) -> Iterator[str]:
    """Yield /dev/loopN backed by the iSCSI LUN at ``url`` (``direct_io``: see the module docstring)."""
    u = IscsiUrl.parse(url)
    export = workdir / f"{name}.fuse"
    export.touch()
    qsd = subprocess.Popen(
        ["qemu-storage-daemon",
         "--blockdev", f"driver=iscsi,node-name={name},transport=tcp,portal={u.host}:{u.port},target={u.target},"
                       f"lun={u.lun},initiator-name=iqn.2026-11.test:blockdev-{name}",
         "--export", f"type=fuse,id=exp-{name},node-name={name},mountpoint={export},writable=on"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dev = ""
    try:
        deadline = time.monotonic() + 15
        while export.stat().st_size == 0 and time.monotonic() < deadline:
            if qsd.poll() is not None:
                raise RuntimeError(f"qemu-storage-daemon failed: {qsd.stdout.read().decode() if qsd.stdout else ''}")
            time.sleep(0.1)
        dev = subprocess.run(["losetup", f"--direct-io={'on' if direct_io else 'off'}", "-f", "--show", str(export)],
                             check=True, capture_output=True, text=True).stdout.strip()
        yield dev
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev], check=False)
        qsd.terminate()
        try:
            qsd.wait(10)
        except subprocess.TimeoutExpired:
            qsd.kill()
        subprocess.run(["umount", "-l", str(export)], check=False, capture_output=True)

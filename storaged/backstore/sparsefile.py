"""A LUN backed by a sparse file: positional I/O, hole punching, SEEK_DATA/SEEK_HOLE, fsync.

Small reads and writes run inline on the event loop: they hit the page cache and a thread hop
would cost more than the copy. Syncs, which wait for the disk, run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os

from .. import persist
from .base import Backstore, BackstoreError, BackstoreFull, Extent

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_libc.fallocate.restype = ctypes.c_int

#: reads and writes at least this large go to a worker thread so one big request
#: does not stall every other session on the loop
THREAD_THRESHOLD = 256 * 1024


class BackstoreInUse(BackstoreError):
    """Another process holds the file's lock: two daemons must never share a LUN file."""


def _check_confined(fd: int, path: str, root: str, created: bool) -> None:
    """Raise BackstoreError unless the open file ``fd`` lies under ``root`` (symbolic links resolved).
    Checked on the descriptor (/proc/self/fd), so nothing can change between the check and the use;
    a file this open created outside (a parent directory swapped for a link) is removed again."""
    real = os.readlink(f"/proc/self/fd/{fd}")
    top = os.path.realpath(root)
    if os.path.commonpath((top, real)) == top:
        return
    if created and not real.endswith(" (deleted)"):
        # Remove only the file this open created: the name may have been replaced meanwhile.
        with contextlib.suppress(OSError):
            here, mine = os.stat(real, follow_symlinks=False), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(real)
    raise BackstoreError(f"{path}: opens {real}, outside the data directory {top} (a symbolic link changed "
                         "after the configuration was checked?); set allow_outside_data_dir: true if intended")


class SparseFileBackstore(Backstore):
    """One regular file per LUN, created sparse at its full size on first open."""

    def __init__(self, path: str, size: int, thin: bool = True, confine_to: str | None = None) -> None:
        self.path = path
        self.size = size
        self.thin = thin
        self._fd = self._open(path, size, confine_to)

    @staticmethod
    def _open(path: str, size: int, confine_to: str | None = None) -> int:
        """Open (creating on first start) and size the file; a new file and a new size are made
        durable before the LUN serves anything, or a power cut could take the LUN file away (or
        shrink it) under data written to it and acknowledged with FUA. With ``confine_to``, the file
        actually opened must lie in that directory: the config check resolved the links earlier, but
        one swapped in since would otherwise have us grow (or create) a file anywhere."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            created = True  # O_EXCL never follows a final symbolic link: this name is a new file
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            created = False
        try:
            if confine_to is not None:
                _check_confined(fd, path, confine_to, created)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackstoreInUse(f"{path}: in use by another process (locked)") from None
            current = os.fstat(fd).st_size
            if current > size:
                raise BackstoreError(
                    f"{path}: file holds {current} bytes but the LUN is configured with {size}; "
                    "refusing to hide data (raise the size in the config)"
                )
            if current < size:
                # Growing is safe; shrinking never happens.
                os.ftruncate(fd, size)
                os.fsync(fd)  # the size is metadata: fdatasync alone need not keep it
                log.info("%s: sized to %d bytes (was %d)", path, size, current)
            if created:
                persist.fsync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def fd(self) -> int:
        return self._fd

    # --- data path -------------------------------------------------------------------------

    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:
            # A short read at the end would only happen if someone truncated the file under us.
            data += bytes(length - len(data))
        return data

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(mv):
                done += os.pwrite(self._fd, mv[done:], offset + done)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackstoreFull(f"{self.path}: no space left for a thin LUN") from exc
            raise BackstoreError(f"{self.path}: write failed: {exc.strerror}") from exc

    def _pwritev(self, offset: int, buffers: list[bytes | bytearray | memoryview]) -> None:
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        try:
            while views:
                n = os.pwritev(self._fd, views, offset)
                offset += n
                while views and n >= len(views[0]):  # drop what was written, keep the rest
                    n -= len(views[0])
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackstoreFull(f"{self.path}: no space left for a thin LUN") from exc
            raise BackstoreError(f"{self.path}: write failed: {exc.strerror}") from exc

    async def writev(self, offset: int, buffers: list[bytes | bytearray | memoryview], fua: bool = False) -> None:
        # No joining copy: the kernel gathers the buffers.
        if sum(len(b) for b in buffers) >= THREAD_THRESHOLD:
            await asyncio.to_thread(self._pwritev, offset, buffers)
        else:
            self._pwritev(offset, buffers)
        if fua:
            await self.flush()

    async def read(self, offset: int, length: int) -> bytes:
        if length >= THREAD_THRESHOLD:
            return await asyncio.to_thread(self._pread, offset, length)
        try:
            return self._pread(offset, length)
        except OSError as exc:
            raise BackstoreError(f"{self.path}: read failed: {exc.strerror}") from exc

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        if len(data) >= THREAD_THRESHOLD:
            await asyncio.to_thread(self._pwrite, offset, data)
        else:
            self._pwrite(offset, data)
        if fua:
            await self.flush()

    async def flush(self) -> None:
        try:
            await asyncio.to_thread(os.fdatasync, self._fd)
        except OSError as exc:
            raise BackstoreError(f"{self.path}: fdatasync failed: {exc.strerror}") from exc

    def flush_now(self) -> None:
        """Synchronous flush for shutdown paths where the loop is going away."""
        os.fdatasync(self._fd)

    # --- thin provisioning -----------------------------------------------------------------

    async def unmap(self, offset: int, length: int) -> None:
        if not self.thin:
            await self.write_zeroes(offset, length)
            return
        if _libc.fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            err = ctypes.get_errno()
            if err == errno.EOPNOTSUPP:
                await super().write_zeroes(offset, length)
                return
            raise BackstoreError(f"{self.path}: punch hole failed: {os.strerror(err)}")

    async def write_zeroes(self, offset: int, length: int) -> None:
        if self.thin:
            await self.unmap(offset, length)
        else:
            await super().write_zeroes(offset, length)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        end = offset + length
        out: list[Extent] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise BackstoreError(f"{self.path}: SEEK_DATA failed: {exc.strerror}") from exc
                data = end  # no data after pos
            data = min(data, end)
            if data > pos:
                out.append(Extent(pos, data - pos, False))
                pos = data
                continue
            hole = min(os.lseek(self._fd, pos, os.SEEK_HOLE), end)
            out.append(Extent(pos, hole - pos, True))
            pos = hole
        return out

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fdatasync(self._fd)
            finally:
                os.close(self._fd)  # also drops the flock
                self._fd = -1

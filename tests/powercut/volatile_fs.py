"""A FUSE file system whose data writes sit in a volatile cache until fsync: a power cut on demand.

kill -9 of a process keeps the kernel's page cache, so it never loses a write the process made;
a power cut loses every write no fsync/fdatasync covered. This file system passes everything
through to a BACKING directory (the "disk") except file data: a write goes into an in-memory
cache of whole 4 KiB blocks, per file (keyed by the backing inode, so renames and hard links
keep it), and reaches the backing file only when that file is fsync'ed or fdatasync'ed (FUSE
fsync), or at a clean unmount. Reads see the cached data, and the size a file has with it.

Metadata (create, mkdir, rename, unlink, truncate, chmod, links) is applied to the backing at
once, i.e. durable at once: the model is a file system that journals metadata synchronously, so
an fsync of a directory is a no-op here. The backing itself is never fsync'ed: the host keeps
its power, only this file system's cache is "volatile".

Control, one command a line on stdin (answers on stdout):

- ``cut [KEEP [SEED]]``: the power cut. Every unsynced 4 KiB block is dropped; with KEEP > 0
  each one is written to the backing with probability KEEP instead (drawn from SEED: a cache
  that wrote back some blocks in any order before the power went). Prints
  ``cut files=F blocks=N kept=K`` and exits at once, leaving the mount dead (the caller unmounts).
- ``dirty``: prints ``dirty files=F blocks=N``.

Run: ``python -m tests.powercut.volatile_fs MOUNT BACKING`` (foreground, as root; prints ``ready``
once mounted). ``tests/powercut/mount.py`` drives it.
"""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]  # fusepy over libfuse2

BLOCK = 4096
Key = tuple[int, int]  # (st_dev, st_ino) of the backing file


@dataclass
class Unsynced:
    """What a file holds that the disk does not: whole blocks, and the size they give the file."""

    fd: int  # a writable descriptor of the backing file, our own (dup), for write-back
    size: int
    blocks: dict[int, bytearray] = field(default_factory=dict)


class VolatileFS(Operations):
    """Passthrough to ``backing`` with a volatile data cache (see the module docstring)."""

    use_ns = True

    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)
        self.lock = threading.RLock()  # one lock: a cut or an fsync is atomic against every write
        self.cache: dict[Key, Unsynced] = {}
        self.fh_key: dict[int, Key] = {}
        self.opens: dict[Key, int] = {}
        self.orphans: set[Key] = set()  # unlinked while open: dropped at the last release

    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    @staticmethod
    def _key(st: os.stat_result) -> Key:
        return (st.st_dev, st.st_ino)

    # --- the cache ---------------------------------------------------------------------------

    def _write_back(self, key: Key, keep: float = 1.0, rng: random.Random | None = None) -> tuple[int, int]:
        """Write the file's cached blocks to the backing (each with probability ``keep``) and forget
        them: (blocks, kept)."""
        entry = self.cache.pop(key, None)
        if entry is None:
            return 0, 0
        kept = 0
        try:
            for blk in sorted(entry.blocks):
                if keep >= 1.0 or (keep > 0 and rng is not None and rng.random() < keep):
                    start = blk * BLOCK
                    data = entry.blocks[blk][: max(0, entry.size - start)]
                    if data:
                        os.pwrite(entry.fd, data, start)
                    kept += 1
        finally:
            os.close(entry.fd)
        return len(entry.blocks), kept

    def _drop(self, key: Key) -> None:
        entry = self.cache.pop(key, None)
        if entry is not None:
            os.close(entry.fd)

    def _gone(self, st: os.stat_result) -> None:
        """The backing name of ``st`` was removed: a last link's unsynced data can never be durable."""
        key = self._key(st)
        if st.st_nlink <= 1:
            if self.opens.get(key):
                self.orphans.add(key)
            else:
                self._drop(key)

    def cut(self, keep: float, seed: int) -> str:
        rng = random.Random(seed)
        with self.lock:
            files, blocks, kept = len(self.cache), 0, 0
            for key in sorted(self.cache):
                n, k = self._write_back(key, keep, rng)
                blocks, kept = blocks + n, kept + k
            return f"cut files={files} blocks={blocks} kept={kept}"

    def dirty(self) -> str:
        with self.lock:
            return f"dirty files={len(self.cache)} blocks={sum(len(e.blocks) for e in self.cache.values())}"

    # --- files -------------------------------------------------------------------------------

    def _opened(self, fd: int) -> int:
        key = self._key(os.fstat(fd))
        with self.lock:
            self.fh_key[fd] = key
            self.opens[key] = self.opens.get(key, 0) + 1
        return fd

    def open(self, path: str, flags: int) -> int:
        flags &= ~(os.O_APPEND | os.O_DIRECT | os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        if flags & os.O_ACCMODE != os.O_RDONLY:  # a partial block is read before it is cached
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return self._opened(os.open(self._path(path), flags | os.O_CLOEXEC))

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self._opened(os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode))

    def release(self, path: str, fh: int) -> int:
        with self.lock:
            key = self.fh_key.pop(fh)
            self.opens[key] -= 1
            if not self.opens[key]:
                del self.opens[key]
                if key in self.orphans:
                    self.orphans.discard(key)
                    self._drop(key)
            os.close(fh)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.lock:
            entry = self.cache.get(self.fh_key[fh])
            data = os.pread(fh, size, offset)
            if entry is None:
                return data
            end = min(offset + size, entry.size)
            if end <= offset:
                return b""
            out = bytearray(data[: end - offset].ljust(end - offset, b"\0"))
            for blk in range(offset // BLOCK, (end - 1) // BLOCK + 1):
                cached = entry.blocks.get(blk)
                if cached is not None:
                    lo, hi = max(offset, blk * BLOCK), min(end, (blk + 1) * BLOCK)
                    out[lo - offset : hi - offset] = cached[lo - blk * BLOCK : hi - blk * BLOCK]
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.lock:
            key = self.fh_key[fh]
            entry = self.cache.get(key)
            if entry is None:
                entry = self.cache[key] = Unsynced(os.dup(fh), os.fstat(fh).st_size)
            end = offset + len(data)
            view = memoryview(data)
            for blk in range(offset // BLOCK, (end - 1) // BLOCK + 1 if data else 0):
                cached = entry.blocks.get(blk)
                if cached is None:  # what the disk holds, as a base for a partial block
                    cached = entry.blocks[blk] = bytearray(os.pread(fh, BLOCK, blk * BLOCK).ljust(BLOCK, b"\0"))
                lo, hi = max(offset, blk * BLOCK), min(end, (blk + 1) * BLOCK)
                cached[lo - blk * BLOCK : hi - blk * BLOCK] = view[lo - offset : hi - offset]
            entry.size = max(entry.size, end)
        return len(data)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.lock:
            self._write_back(self.fh_key[fh])
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # metadata is applied at once

    def flush(self, path: str, fh: int) -> int:
        return 0  # close(2) makes nothing durable

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.lock:
            if fh is not None:
                os.ftruncate(fh, length)
                key = self.fh_key[fh]
            else:
                os.truncate(self._path(path), length)
                key = self._key(os.lstat(self._path(path)))
            entry = self.cache.get(key)
            if entry is not None:
                for blk in [b for b in entry.blocks if b * BLOCK >= length]:
                    del entry.blocks[blk]
                tail = entry.blocks.get(length // BLOCK)
                if tail is not None:
                    tail[length % BLOCK :] = bytes(BLOCK - length % BLOCK)
                entry.size = length
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        with self.lock:
            st = os.fstat(fh) if fh is not None else os.lstat(self._path(path))
            attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                                 "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}
            for k in ("st_atime", "st_mtime", "st_ctime"):
                attrs[k] = attrs.pop(k + "_ns")
            entry = self.cache.get(self._key(st))
            if entry is not None:
                attrs["st_size"] = entry.size
            return attrs

    # --- names and metadata: straight to the backing ----------------------------------------

    def unlink(self, path: str) -> int:
        with self.lock:
            st = os.lstat(self._path(path))
            os.unlink(self._path(path))
            self._gone(st)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.lock:
            try:
                replaced: os.stat_result | None = os.lstat(self._path(new))
            except FileNotFoundError:
                replaced = None
            moved = os.lstat(self._path(old))
            os.rename(self._path(old), self._path(new))
            if replaced is not None and self._key(replaced) != self._key(moved):
                self._gone(replaced)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._path(path))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._path(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._path(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._path(path))
        else:
            os.utime(self._path(path), ns=times)
        return 0

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._path(path), amode):
            raise FuseOSError(errno.EACCES)
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._path(target))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._path(source), self._path(target))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        os.mknod(self._path(path), mode, dev)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._path(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def init(self, path: str) -> None:
        print("ready", flush=True)

    def destroy(self, path: str) -> None:
        """A clean unmount writes every cached block back, as an OS does at shutdown."""
        with self.lock:
            for key in list(self.cache):
                self._write_back(key)


def control(fs: VolatileFS) -> None:
    """Read commands from stdin (see the module docstring); a cut ends the process."""
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "cut":
            try:
                keep = float(words[1]) if len(words) > 1 else 0.0
                seed = int(words[2]) if len(words) > 2 else 0
            except ValueError:
                print(f"error: usage: cut [KEEP [SEED]], got {line.strip()!r}", flush=True)
                continue
            with fs.lock:  # held until the exit: nothing gets in after the cut
                print(fs.cut(keep, seed), flush=True)
                os._exit(0)
        elif words[0] == "dirty":
            print(fs.dirty(), flush=True)
        else:
            print(f"error: unknown command {words[0]!r} (cut, dirty)", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.powercut.volatile_fs MOUNT BACKING", file=sys.stderr)
        return 2
    mount, backing = argv
    for what, path in (("mount point", mount), ("backing directory", backing)):
        if not os.path.isdir(path):
            print(f"volatile_fs: {what} {path}: not a directory", file=sys.stderr)
            return 2
    fs = VolatileFS(backing)
    threading.Thread(target=control, args=(fs,), daemon=True).start()
    FUSE(fs, mount, foreground=True, big_writes=True, max_write=1 << 17, max_read=1 << 17, fsname="volatile_fs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Crash-safe small files: write to a temporary name, fsync, rename, fsync the directory.

Every table the array keeps (its identity now; LUN maps, pairs and journal pointers later) goes
through here, so a crash leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
from typing import Any


def atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make the directory's entries durable (a new or renamed name survives a power cut)."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)

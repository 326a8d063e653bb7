"""A fake LinkHandler over MemoryBackstore volumes, and a fake transport for socket-free tests."""

from __future__ import annotations

import asyncio
from typing import Any

from storaged.backstore.base import BackstoreError, BackstoreFull, BackstoreUnavailable, Extent
from storaged.backstore.memory import MemoryBackstore
from storaged.origin import current_origin
from storaged.remote.api import RemoteError, VolumeInfo
from storaged.remote.protocol import Frame, Status
from storaged.remote.reader import FrameReader

TARGET = "iqn.2026-11.io.storaged:b"


class MemoryVolume:
    """A Volume over a MemoryBackstore that records origins and concurrency, and can be slowed."""

    def __init__(self, target: str, lun: int, size: int, *, thin: bool = True, block_size: int = 512) -> None:
        self.store = MemoryBackstore(size, thin)
        self.info = VolumeInfo(target, lun, size, block_size, thin, False, f"6{lun:031x}")
        self.origins: list[str] = []
        self.delay = 0.0
        self.running = 0
        self.max_running = 0
        self.fail: BaseException | None = None

    async def _enter(self) -> None:
        self.origins.append(current_origin())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
        finally:
            self.running -= 1

    async def read(self, offset: int, length: int) -> bytes:
        await self._enter()
        return await self.store.read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        await self._enter()
        await self.store.write(offset, data, fua)

    async def flush(self) -> None:
        await self._enter()
        await self.store.flush()

    async def unmap(self, offset: int, length: int) -> None:
        await self._enter()
        await self.store.unmap(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._enter()
        await self.store.write_zeroes(offset, length)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        await self._enter()
        return await self.store.extents(offset, length)

    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool) -> int:
        await self._enter()
        return await self.store.compare_and_write(offset, expected, data, fua)


class FakeHandler:
    """Two volumes (LUN 0: 32 MiB, LUN 1: 1 MiB thick) and a few control calls."""

    def __init__(self) -> None:
        self.volumes = {(TARGET, 0): MemoryVolume(TARGET, 0, 32 << 20),
                        (TARGET, 1): MemoryVolume(TARGET, 1, 1 << 20, thin=False)}
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []
        self.running = 0
        self.max_running = 0

    def volume(self, peer: str, target: str, lun: int) -> MemoryVolume | None:
        return self.volumes.get((target or TARGET, lun))

    async def call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((peer, method, params, current_origin()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if method == "echo":
                return {"peer": peer, "origin": current_origin(), "params": params}
            if method == "sleep":
                await asyncio.sleep(float(params["seconds"]))
                return {"slept": params["seconds"]}
            if method == "raise":
                kind = params["kind"]
                if kind == "full":
                    raise BackstoreFull("no space left")
                if kind == "unavailable":
                    raise BackstoreUnavailable("store away")
                if kind == "io":
                    raise BackstoreError("medium error")
                if kind == "remote":
                    raise RemoteError(Status.NOT_ALLOWED, "not for you")
                raise RuntimeError("boom")
            if method == "bad_result":
                return ["not", "a", "dict"]  # type: ignore[return-value]
            raise RemoteError(Status.NOT_FOUND, f"no method {method}")
        finally:
            self.running -= 1


class FakeTransport:
    """Just enough of asyncio.Transport for a protocol object; records output and pauses."""

    def __init__(self, protocol: Any = None) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.pauses = 0
        self.aborted = False

    def writelines(self, bufs: list[Any]) -> None:
        for b in bufs:
            self.out += b

    def write(self, b: Any) -> None:
        self.out += b

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


def feed_protocol(proto: Any, data: bytes, chunk: int = 1 << 20) -> None:
    """Deliver ``data`` through the BufferedProtocol interface, as a transport would."""
    pos = 0
    while pos < len(data):
        buf = proto.get_buffer(-1)
        n = min(len(buf), len(data) - pos, chunk)
        buf[:n] = data[pos : pos + n]
        del buf
        pos += n
        proto.buffer_updated(n)


def frames_of(data: bytes | bytearray, reader: FrameReader | None = None) -> list[Frame]:
    reader = reader or FrameReader()
    reader.feed(bytes(data))
    out = []
    while (f := reader.next_frame()) is not None:
        out.append(f)
    return out


def join(bufs: list[Any]) -> bytes:
    return b"".join(bytes(b) for b in bufs)

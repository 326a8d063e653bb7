"""Fixtures: the real command device store behind hostctl's transports.

``StoreIO`` wraps a backstore (usually :class:`CommandDeviceStore`) as a CommandDeviceIO and sets
the request origin for each call, as the iSCSI transport does; ``iscsi_site`` serves real LUNs over
a real in-process iSCSI portal, so IscsiDevice and the CLI run end to end.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from hostctl.device import CommandDeviceIO
from storaged.backstore.base import Backstore, BackstoreUnavailable
from storaged.backstore.memory import MemoryBackstore
from storaged.cmddev.block import ResultStatus
from storaged.cmddev.dispatch import CommandDispatcher, CommandError
from storaged.cmddev.store import CommandDeviceStore
from storaged.iscsi.portal import Portal, TargetInfo
from storaged.iscsi.transport import IscsiServer
from storaged.origin import ORIGIN
from storaged.scsi.lu import LogicalUnit
from storaged.scsi.target import ScsiTarget

HOST = "iqn.2026-11.test:host1"
OTHER = "iqn.2026-11.test:host2"
TARGET_A = "iqn.2026-11.io.storaged:site-a"
NAA_B_CMD = "6005354f" + "bb" * 12

SLOW, FAIL = 100, 101


def site_info(name: str = "site-a", target: str = TARGET_A) -> dict[str, Any]:
    return {
        "array": name,
        "uuid": "0f0e0d0c-0000-4000-8000-000000000001",
        "version": "0.1.0",
        "uptime": 12.5,
        "portal": "127.0.0.1:3260",
        "luns": [
            {
                "target": target,
                "lun": 0,
                "type": "data",
                "size": 1 << 30,
                "block_size": 512,
                "thin": True,
                "naa": "6005354f" + "aa" * 12,
                "serial": "A0",
                "map": None,
            },
            {
                "target": target,
                "lun": 1,
                "type": "command_device",
                "size": 16 << 20,
                "block_size": 512,
                "thin": False,
                "naa": "6005354f" + "a1" * 12,
                "serial": "A1",
                "map": None,
            },
            {
                "target": target,
                "lun": 3,
                "type": "virtual",
                "size": 16 << 20,
                "block_size": 512,
                "thin": False,
                "naa": NAA_B_CMD,
                "serial": "A3",
                "map": {
                    "array": "site-b",
                    "target": "iqn.2026-11.io.storaged:site-b",
                    "lun": 2,
                    "state": "online",
                    "command_device": True,
                },
            },
            {
                "target": target,
                "lun": 5,
                "type": "virtual",
                "size": 16 << 20,
                "block_size": 512,
                "thin": False,
                "naa": "6005354f" + "cc" * 12,
                "serial": "A5",
                "map": {
                    "array": "site-c",
                    "target": "iqn.2026-11.io.storaged:site-c",
                    "lun": 2,
                    "state": "offline",
                    "command_device": True,
                },
            },
        ],
        "command_devices": [
            {"array": name, "target": target, "lun": 1},
            {"array": "site-b", "target": target, "lun": 3},
            {"array": "site-c", "target": target, "lun": 5},
        ],
        "links": [
            {
                "peer": "site-b",
                "state": "up",
                "since": 1764115200.0,
                "rtt_ms": 0.42,
                "reconnects": 0,
                "last_error": None,
            },
            {
                "peer": "site-c",
                "state": "down",
                "since": 1764115300.0,
                "rtt_ms": None,
                "reconnects": 7,
                "last_error": "connection refused",
            },
        ],
    }


def make_dispatcher(info: dict[str, Any] | None = None) -> CommandDispatcher:
    info = info if info is not None else site_info()
    d = CommandDispatcher()
    d.register(1, "echo", lambda params, origin: {"echo": params, "origin": origin})
    d.register(2, "array_info", lambda params, origin: info)
    d.register(3, "link_status", lambda params, origin: {"links": info.get("links", [])})
    d.register(4, "lun_list", lambda params, origin: {"luns": info.get("luns", [])})

    async def slow(params: dict[str, Any], origin: str) -> dict[str, Any]:
        await asyncio.sleep(float(params["seconds"]))
        return {"slept": params["seconds"]}

    def fail(params: dict[str, Any], origin: str) -> None:
        raise CommandError(ResultStatus[params["status"]], params.get("message", ""))

    d.register(SLOW, "slow", slow)
    d.register(FAIL, "fail", fail)
    return d


class StoreIO(CommandDeviceIO):
    """A backstore as a command device transport, with the request origin set per call.

    ``before_write(offset, data)`` runs before each write (to stage races); ``mangle(data)`` may
    rewrite what is written (to corrupt blocks).
    """

    def __init__(
        self, store: Backstore, origin: str = HOST, block_size: int = 512, name: str = "mem://cmd"
    ) -> None:
        self.store = store
        self.origin = origin
        self.block_size = block_size
        self.name = name
        self.writes: list[tuple[int, bytes]] = []
        self.reads = 0
        self.before_write: Callable[[int, bytes], Awaitable[None]] | None = None
        self.after_write: Callable[[int, bytes], Awaitable[None]] | None = None
        self.mangle: Callable[[bytes], bytes] | None = None
        self.closed = False

    async def _as_origin(self, coro_fn: Callable[[], Awaitable[Any]]) -> Any:
        ctx = contextvars.copy_context()
        ctx.run(ORIGIN.set, self.origin)
        # run in a task with that context, as the iSCSI transport runs each command in its own task
        return await asyncio.get_running_loop().create_task(coro_fn(), context=ctx)

    async def _read_blocks(self, offset: int, length: int) -> bytes:
        assert offset % self.block_size == 0 and length % self.block_size == 0
        self.reads += 1
        return await self._as_origin(lambda: self.store.read(offset, length))

    async def _write_blocks(self, offset: int, data: bytes) -> None:
        if self.before_write is not None:
            await self.before_write(offset, data)
        if self.mangle is not None:
            data = self.mangle(data)
        self.writes.append((offset, data))
        await self._as_origin(lambda: self.store.write(offset, data, True))
        if self.after_write is not None:
            await self.after_write(offset, data)

    async def close(self) -> None:
        self.closed = True


def make_store(
    dispatcher: CommandDispatcher | None = None, size: int = 16 << 20, **kw: Any
) -> CommandDeviceStore:
    return CommandDeviceStore(size, dispatcher or make_dispatcher(), **kw)


@pytest.fixture
async def store() -> AsyncIterator[CommandDeviceStore]:
    s = make_store()
    yield s
    s.close()


class DownStore(MemoryBackstore):
    """A virtual volume whose peer link is down."""

    async def read(self, offset: int, length: int) -> bytes:
        raise BackstoreUnavailable("link down")

    async def write(self, offset: int, data: Any, fua: bool = False) -> None:
        raise BackstoreUnavailable("link down")


@dataclass
class Site:
    host: str
    port: int
    server: IscsiServer
    stores: dict[int, Backstore] = field(default_factory=dict)

    def url(self, lun: int, target: str = TARGET_A) -> str:
        return f"iscsi://{self.host}:{self.port}/{target}/{lun}"


@pytest.fixture
async def iscsi_site() -> AsyncIterator[Site]:
    """site-a: LUN 0 data, LUN 1 its command device, LUN 3 "site-b's" command device (a virtual
    volume in a real array; here a second store answering as site-b), LUN 5 site-c's, link down."""
    stores: dict[int, Backstore] = {
        0: MemoryBackstore(1 << 20),
        1: make_store(make_dispatcher(site_info("site-a"))),
        3: make_store(make_dispatcher(site_info("site-b", "iqn.2026-11.io.storaged:site-b"))),
        5: DownStore(16 << 20),
    }
    luns = {
        n: LogicalUnit(s, naa=bytes.fromhex("6005354f" + f"{n:02x}" * 12), serial=f"S{n}")
        for n, s in stores.items()
    }
    portal = Portal(
        targets={TARGET_A: TargetInfo(TARGET_A, luns=frozenset(luns))},
        addresses=[],
        operational={
            "MaxRecvDataSegmentLength": "262144",
            "InitialR2T": "No",
            "ImmediateData": "Yes",
            "MaxBurstLength": "16776192",
            "FirstBurstLength": "262144",
        },
    )
    server = IscsiServer(portal, {TARGET_A: ScsiTarget(TARGET_A, luns)})
    host, port = await server.start("127.0.0.1", 0)
    try:
        yield Site(host, port, server, stores)
    finally:
        await server.close(grace=0.5)
        for s in stores.values():
            s.close()

"""Helpers for driving a CommandDeviceStore directly, as the SCSI layer would, with a fake array."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from storaged.cmddev.block import (Command, Directory, Response, SlotState, decode_directory, decode_response,
                                   encode_release)
from storaged.cmddev.commands import build_dispatcher
from storaged.cmddev.dispatch import CommandDispatcher
from storaged.cmddev.store import CommandDeviceStore
from storaged.origin import ORIGIN

SS = 4096  # slot size used by most tests
SLOTS = 15
SIZE = (SLOTS + 1) * SS
H1 = "iqn.2026-11.test:host1"
H2 = "iqn.2026-11.test:host2"
VIA_A = "site-a/iqn.2026-11.test:host1"


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeControl:
    """ArrayControl with the documented schema; counts calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def array_info(self) -> dict[str, Any]:
        self.calls.append("array_info")
        return {
            "array": "site-b", "uuid": "0b3c9a8e-0000-4000-8000-000000000001", "version": "0.1.0",
            "luns": [
                {"target": "iqn.2026-11.test:b", "lun": 0, "size": 1 << 30, "block_size": 512, "type": "data",
                 "thin": True, "naa": "6005354f" + "11" * 12, "serial": "SN0", "map": None},
                {"target": "iqn.2026-11.test:b", "lun": 1, "size": 16 << 20, "block_size": 512,
                 "type": "command_device", "thin": False, "naa": "6005354f" + "22" * 12, "serial": "SN1",
                 "map": None},
            ],
            "lun_map": [],
            "command_devices": [{"array": "site-b", "target": "iqn.2026-11.test:b", "lun": 1}],
            "links": [],
        }

    def link_status(self) -> dict[str, Any]:
        self.calls.append("link_status")
        return {"links": [{"peer": "site-a", "address": "10.0.0.1:3261", "state": "up", "since": 12.5,
                           "rtt_ms": 0.4, "reconnects": 0, "last_error": None, "inflight": 0}]}


@contextlib.contextmanager
def as_origin(name: str) -> Iterator[None]:
    token = ORIGIN.set(name)
    try:
        yield
    finally:
        ORIGIN.reset(token)


def pad(block: bytes, to: int = 512) -> bytes:
    return block + bytes(-len(block) % to)


class Harness:
    """A store plus the host-side steps of the protocol, each as one call."""

    def __init__(self, dispatcher: CommandDispatcher | None = None, control: FakeControl | None = None,
                 **kw: Any) -> None:
        self.control = control or FakeControl()
        self.dispatcher = dispatcher or build_dispatcher(self.control)
        self.clock = FakeClock()
        kw.setdefault("slot_size", SS)
        size = kw.pop("size", SIZE)
        self.store = CommandDeviceStore(size, self.dispatcher, clock=self.clock, **kw)

    async def write(self, who: str, offset: int, data: bytes) -> None:
        with as_origin(who):
            await self.store.write(offset, data)

    async def read(self, who: str, offset: int, length: int) -> bytes:
        with as_origin(who):
            data = await self.store.read(offset, length)
        assert len(data) == length
        return data

    async def send(self, who: str, slot: int, cmd: Command) -> None:
        await self.write(who, slot * SS, pad(cmd.encode()))

    async def slot(self, who: str, slot: int) -> Response:
        return decode_response(await self.read(who, slot * SS, SS))

    async def directory(self, who: str) -> Directory:
        return decode_directory(await self.read(who, 0, 4096))

    async def release(self, who: str, slot: int, tag: int) -> None:
        await self.write(who, slot * SS, pad(encode_release(tag)))

    async def run(self, who: str, slot: int, cmd: Command) -> Response:
        """Send ``cmd`` and poll its slot (as a host would) until it is no longer PENDING."""
        await self.send(who, slot, cmd)
        for _ in range(100):
            r = await self.slot(who, slot)
            if r.state != SlotState.PENDING:
                return r
            await asyncio.sleep(0)
        raise AssertionError(f"slot {slot} still PENDING")

    async def snapshot(self, who: str) -> bytes:
        """Everything this origin can read: for 'nothing changed' checks."""
        return await self.read(who, 0, SIZE)


@pytest.fixture
def h() -> Harness:
    return Harness()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)

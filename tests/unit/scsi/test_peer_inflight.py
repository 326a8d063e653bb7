"""A peer's COMPARE AND WRITE and zeroing (served over the remote link by storaged/array/volumes.py)
against host writes in flight on the same blocks, and the other way round (issue 8).

A peer's virtual volume forwards its host's CAW and WRITE SAME/UNMAP to this array, so they must be
exactly as atomic here as a local CAW: compare against the state before or after a write in flight,
never its torn mix; and a zeroing in flight is a write a local CAW must see whole. The store tears
the next armed write or zeroing in two halves (see test_caw_inflight.py); the peer's requests come
in through the volume the link serves (in process) and through a real link on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from storaged.array.volumes import LuVolume
from storaged.remote.api import VolumeInfo
from storaged.remote.link import LinkServer, PeerLink
from storaged.scsi.lu import LogicalUnit

from .conftest import BS, MISCOMPARE, assert_good, assert_sense, cdb16
from .test_caw_inflight import N, TearingStore, caw, settle, setup, torn_write

pytestmark = pytest.mark.asyncio

TARGET = "iqn.2026-11.io.storaged:peer-inflight"
SECRET = "s3cret-peer-inflight"


class TearingZeroStore(TearingStore):
    """Also tears the next armed zeroing (WRITE ZEROES, and UNMAP, which zeroes in memory)."""

    async def write_zeroes(self, offset: int, length: int) -> None:
        if self.armed:
            self.armed = False
            half = (length // BS // 2) * BS
            await super().write_zeroes(offset, half)
            self.torn.set()
            await self.resume.wait()
            await super().write_zeroes(offset + half, length - half)
        else:
            await super().write_zeroes(offset, length)


def volume_of(lu: LogicalUnit) -> LuVolume:
    info = VolumeInfo(TARGET, 0, lu.num_blocks * lu.block_size, lu.block_size, lu.thin, False, lu.naa.hex())
    return LuVolume(lu, info)


# --- the peer's COMPARE AND WRITE against a host write in flight ---------------------------------


async def test_peer_caw_never_matches_the_torn_state_of_a_host_write() -> None:
    store, lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    torn = b"B" * (N // 2) * BS + b"A" * (N // 2) * BS
    assert await store.read(0, N * BS) == torn
    peer = asyncio.ensure_future(volume_of(lu).compare_and_write(0, torn, b"C" * N * BS, False))
    await settle()
    store.resume.set()
    assert_good(await write)
    assert await peer >= 0  # a miscompare: before the write the range held A, after it B
    assert await store.read(0, N * BS) == b"B" * N * BS


async def test_peer_caw_expecting_the_new_data_waits_for_the_host_write() -> None:
    store, lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    peer = asyncio.ensure_future(volume_of(lu).compare_and_write(0, b"B" * N * BS, b"C" * N * BS, False))
    await settle()
    assert not peer.done()
    store.resume.set()
    assert_good(await write)
    assert await peer == -1
    assert await store.read(0, N * BS) == b"C" * N * BS


async def test_peer_caw_on_another_range_does_not_wait_for_a_host_write() -> None:
    """Only the CAW's own blocks are held, as for a local CAW, not the whole LU."""
    store, lu, ini = await setup()
    write = await torn_write(store, ini, b"B" * N * BS)
    peer = asyncio.ensure_future(volume_of(lu).compare_and_write(N * BS, bytes(BS), b"C" * BS, False))
    await settle()
    assert peer.done() and not write.done()
    assert await peer == -1
    store.resume.set()
    assert_good(await write)


# --- the peer's zeroing in flight against a local COMPARE AND WRITE -----------------------------


@pytest.mark.parametrize("op", ["write_zeroes", "unmap"])
async def test_local_caw_never_matches_the_torn_state_of_a_peer_zeroing(op: str) -> None:
    store, lu, ini = await setup_zero()
    store.arm()
    zeroing = asyncio.ensure_future(getattr(volume_of(lu), op)(0, N * BS))
    await store.torn.wait()
    torn = bytes((N // 2) * BS) + b"A" * (N // 2) * BS
    assert await store.read(0, N * BS) == torn  # the zeroing really is half done
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), torn + b"C" * N * BS))
    await settle()
    store.resume.set()
    await zeroing
    assert_sense(await cmp, MISCOMPARE, 0x1D, 0x00)
    assert await store.read(0, N * BS) == bytes(N * BS)


@pytest.mark.parametrize("op", ["write_zeroes", "unmap"])
async def test_peer_zeroing_arriving_during_a_local_caw_lands_after_it(op: str) -> None:
    """Torn host write, then a local CAW waiting for it, then the peer's zeroing: the zeroing must
    not overtake the CAW (it would land on the torn write and the CAW then write over it)."""
    store, lu, ini = await setup_zero()
    write = await torn_write(store, ini, b"B" * N * BS)
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), b"B" * N * BS + b"C" * N * BS))
    await settle()
    zeroing = asyncio.ensure_future(getattr(volume_of(lu), op)(0, BS))
    await settle()
    assert not zeroing.done()
    store.resume.set()
    assert_good(await write)
    assert_good(await cmp)
    await zeroing
    assert await store.read(0, N * BS) == bytes(BS) + b"C" * (N - 1) * BS


async def test_read_only_lun_refuses_the_peer_zeroing_and_caw() -> None:
    from storaged.remote.api import RemoteError

    _store, lu, _ini = await setup()
    lu.held = True
    vol = volume_of(lu)
    for call in (vol.write_zeroes(0, BS), vol.unmap(0, BS), vol.compare_and_write(0, b"A" * BS, b"C" * BS, False)):
        with pytest.raises(RemoteError, match="read-only"):
            await call


async def setup_zero() -> tuple[TearingZeroStore, LogicalUnit, Any]:
    from storaged.scsi.target import ScsiTarget

    from .conftest import I1, NAA, Initiator

    store = TearingZeroStore(1024 * BS)
    lu = LogicalUnit(store, naa=NAA, serial="SN0001", block_size=BS)
    ini = Initiator(ScsiTarget("t", {0: lu}), I1)
    await ini.clear_ua()
    assert_good(await ini.cmd(cdb16(0x8A, 0, N), b"A" * N * BS))
    return store, lu, ini


# --- the same through a real link on 127.0.0.1 -------------------------------------------------


class OneLun:
    """The array's LinkHandler reduced to one LU served as storaged/array/array.py serves it."""

    def __init__(self, lu: LogicalUnit) -> None:
        self.lu = lu

    def volume(self, peer: str, target: str, lun: int) -> LuVolume | None:
        return volume_of(self.lu) if lun == 0 and target in ("", TARGET) else None

    async def call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {}


@dataclass
class Linked:
    store: TearingZeroStore
    ini: Any
    link: PeerLink


@pytest.fixture
async def linked() -> AsyncIterator[Linked]:
    store, lu, ini = await setup_zero()
    server = LinkServer("B", "uuid-b", {"A": SECRET}, OneLun(lu))
    _host, port = await server.start("127.0.0.1", 0)
    link = PeerLink("A", "uuid-a", "B", "127.0.0.1", port, SECRET, backoff_initial=0.05)
    link.start()
    try:
        await link.wait_connected(5)
        yield Linked(store, ini, link)
    finally:
        store.resume.set()
        await link.close()
        await server.close()


async def test_caw_over_the_link_never_matches_a_torn_host_write(linked: Linked) -> None:
    store, ini, link = linked.store, linked.ini, linked.link
    write = await torn_write(store, ini, b"B" * N * BS)
    torn = b"B" * (N // 2) * BS + b"A" * (N // 2) * BS
    peer = asyncio.ensure_future(link.compare_and_write(TARGET, 0, 0, torn, b"C" * N * BS))
    # the request reaches the LU and waits there (the other range's CAW below answers first)
    assert await link.compare_and_write(TARGET, 0, N * BS, bytes(BS), b"D" * BS) == -1
    assert not write.done() and not peer.done()
    store.resume.set()
    assert_good(await write)
    assert await peer >= 0
    assert await store.read(0, N * BS) == b"B" * N * BS


async def test_local_caw_never_matches_a_torn_zeroing_over_the_link(linked: Linked) -> None:
    store, ini, link = linked.store, linked.ini, linked.link
    store.arm()
    zeroing = asyncio.ensure_future(link.write_zeroes(TARGET, 0, 0, N * BS))
    await store.torn.wait()
    torn = bytes((N // 2) * BS) + b"A" * (N // 2) * BS
    cmp = asyncio.ensure_future(ini.cmd(caw(0, N), torn + b"C" * N * BS))
    await settle()
    store.resume.set()
    await zeroing
    assert_sense(await cmp, MISCOMPARE, 0x1D, 0x00)
    assert await store.read(0, N * BS) == bytes(N * BS)

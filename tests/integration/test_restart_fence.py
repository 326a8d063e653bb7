"""Split brain on restart (issue 7, defect 8): a primary that comes back takes no host write until
its peer confirms it is still the primary, or an operator releases it (hostctl pairrelease)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from .test_replication import (
    PVOL,

    command,
    create_pair,
    drained_and_equal,
    random_writes,
    session,
    wait_state,
    write16,
)
from .daemon import wait_for
from .sites import start_sites

pytestmark = pytest.mark.integration

GOOD, CHECK_CONDITION = 0, 2


async def hammer(port: int, seconds: float) -> tuple[int, int]:
    """Write to the P-VOL as fast as one host can for ``seconds`` (logging in again whenever the
    array is not there yet): (acknowledged, refused) counts."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    acked = refused = 0
    while loop.time() < end:
        try:
            s = await session(port, "site-a")
        except (OSError, ConnectionError, asyncio.IncompleteReadError, Exception):  # noqa: BLE001 - not up yet
            await asyncio.sleep(0.02)
            continue
        try:
            while loop.time() < end:
                r = await s.scsi(PVOL, write16(random.randrange(0, 1000), 1), data_out=os.urandom(512))
                if r.status == GOOD:
                    acked += 1
                else:
                    refused += 1
                    await asyncio.sleep(0.01)
        finally:
            await s.logout()
    return acked, refused


async def group_on(port: int, site: str) -> dict:
    return (await command(port, site, 17, {"group": "g1"})).data["groups"][0]


def test_a_restarted_primary_takes_no_write_after_the_peer_took_over(tmp_path: Path) -> None:
    """kill -9 site-a, takeover on site-b, site-b unreachable when site-a restarts: every host write
    to site-a is refused (FENCED); once site-b answers, site-a learns it was taken over and stays
    fenced; pairrelease is the operator's way out."""
    sites = start_sites(tmp_path)
    rng = random.Random(8)

    async def scenario() -> None:
        assert await asyncio.to_thread(sites.linked)
        await create_pair(sites)
        await wait_state(sites, "PAIR")
        await random_writes(sites.a.port, 10, rng)
        await drained_and_equal(sites)
        sites.a.kill()
        r = await command(sites.b.port, "site-b", 26, {"group": "g1"})
        assert r.data["state"] == "SSWS", r.data
        sites.b.kill()  # the new primary is out of reach while the old one restarts
        await asyncio.to_thread(sites.a.start)
        acked, refused = await hammer(sites.a.port, 3.0)
        assert acked == 0 and refused > 0, (acked, refused)
        g = await group_on(sites.a.port, "site-a")
        assert g["state"] == "FENCED" and "restarted" in g["error"], g
        # site-b comes back: site-a learns of the takeover (its own question or site-b's fence,
        # whichever comes first) and stays fenced
        await asyncio.to_thread(sites.b.start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "took over" not in (g := await group_on(sites.a.port, "site-a"))["error"]:
            assert loop.time() < deadline, g
            await asyncio.sleep(0.2)
        assert g["state"] == "FENCED", g
        acked, _ = await hammer(sites.a.port, 1.0)
        assert acked == 0
        assert (await group_on(sites.b.port, "site-b"))["state"] == "SSWS"

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()


def test_a_restarted_primary_resumes_once_confirmed_or_released(tmp_path: Path) -> None:
    """The same restart without a takeover: writes resume by themselves once site-b confirms the
    role; with site-b gone, only PAIR_RELEASE (hostctl pairrelease) lets them in."""
    sites = start_sites(tmp_path)
    rng = random.Random(9)

    async def scenario() -> None:
        assert await asyncio.to_thread(sites.linked)
        await create_pair(sites)
        await wait_state(sites, "PAIR")
        sites.a.kill()
        await asyncio.to_thread(sites.a.start)
        assert await asyncio.to_thread(lambda: wait_for(lambda: "confirmed this array as the primary"
                                                        in sites.a.log, 30))
        assert (await group_on(sites.a.port, "site-a"))["state"] == "PAIR"
        await random_writes(sites.a.port, 10, rng)  # asserts every write is GOOD
        await drained_and_equal(sites)
        # site-b is lost for good; site-a restarts and waits; the operator releases it
        sites.b.kill()
        sites.a.kill()
        await asyncio.to_thread(sites.a.start)
        s = await session(sites.a.port, "site-a")
        w = await s.scsi(PVOL, write16(0, 1), data_out=bytes(512))
        assert w.status == CHECK_CONDITION, w
        await s.logout()
        r = await command(sites.a.port, "site-a", 27, {"group": "g1"})
        assert r.data["state"] == "PAIR", r.data
        await random_writes(sites.a.port, 5, rng)
        refused = await command(sites.a.port, "site-a", 27, {"group": "g1"}, check=False)
        assert refused.status.name == "WRONG_STATE", refused

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()

"""A host write in flight on a volume at the moment it becomes an S-VOL.

Found by the simulator's long run (seed 21800: stray_writes, spike): a write to site-b's LUN passed
the write-protect check while the LUN was still simple, paircreate made it an S-VOL, the initial
copy ran, and the write landed after it: the S-VOL then differed from the P-VOL in PAIR, with
pairsyncwait DONE. The same holds for `pairresync` of S-VOLs that were writable while split. Now
the secondary protects the S-VOLs and waits for writes already in flight before any copy starts."""

from __future__ import annotations

import struct
from typing import Any

from storaged.sim.disk import BLOCK

from .test_repl_defects import G, TARGET, VOL, EdgeLink, Sites, run, until


def _late_write(s: Sites, block: int) -> Any:
    """A host write on site-b's LUN whose disk write takes 0.5 s (everything else is instant)."""
    delays = iter([0.5])
    s.b.disks[VOL].delay = lambda: next(delays, 0.0)
    data = b"".join(struct.pack("<QQ", 4242, block + i) * (BLOCK // 16) for i in range(4))
    lu = s.b.array.luns[(TARGET, VOL)].lu
    return lu.store(block * BLOCK, data, False)


def test_a_write_in_flight_when_paircreate_protects_the_svol_lands_before_the_copy(tmp_path: Any) -> None:
    async def body(s: Sites, _link: EdgeLink) -> None:
        import asyncio

        await s.write(40)  # P-VOL data in that region, so the copy has something to bring
        stray = asyncio.get_running_loop().create_task(_late_write(s, 40))
        await asyncio.sleep(0.01)
        await s.create()
        await stray  # acknowledged: it was accepted before the volume was an S-VOL
        await s.synced()
        assert s.same(), "PAIR with the S-VOL holding a host write the P-VOL never had"

    run(tmp_path, body)


def test_a_write_in_flight_on_a_writable_split_svol_at_pairresync_lands_before_the_copy(tmp_path: Any) -> None:
    async def body(s: Sites, _link: EdgeLink) -> None:
        import asyncio

        await s.create()
        await s.write(40)
        await s.synced()
        await s.b.array.repl.split(G, True)  # pairsplit -rw: S-VOLs writable
        assert await until(lambda: s.state(s.b) == "PSUS"), s.states()
        stray = asyncio.get_running_loop().create_task(_late_write(s, 40))
        await asyncio.sleep(0.01)
        await s.b.array.repl.resync(G, True)
        await stray
        await s.synced()
        assert s.same(), "PAIR with the S-VOL holding a write made while split, after the resync's copy"

    run(tmp_path, body)


def test_a_write_in_flight_on_the_pvol_when_the_pair_is_formed_reaches_the_svol(tmp_path: Any) -> None:
    """The primary's side of the same: a host write that started on the P-VOL's plain store just
    before prepare_primary wrapped it in the journal was neither journaled nor (if it landed after
    the copy read its region) copied: PAIR with the S-VOL missing it."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        import asyncio

        delays = iter([0.5])
        s.a.disks[VOL].delay = lambda: next(delays, 0.0)
        data = b"".join(struct.pack("<QQ", 4343, 40 + i) * (BLOCK // 16) for i in range(4))
        lu = s.a.array.luns[(TARGET, VOL)].lu
        inflight = asyncio.get_running_loop().create_task(lu.store(40 * BLOCK, data, False))
        await asyncio.sleep(0.01)
        await s.create()
        await inflight
        await s.synced()
        assert s.same(), "PAIR with the S-VOL missing a write the P-VOL acknowledged"

    run(tmp_path, body)


def test_the_pvol_takes_host_writes_while_pair_formation_waits_for_one_in_flight(tmp_path: Any) -> None:
    """A new group is SMPL (fenced: DATA PROTECT) until prepare_primary applies CREATE; waiting for a
    slow write in flight before that kept the P-VOL refusing host writes for as long (review). CREATE
    now comes right after the wrap: writes arriving meanwhile are journaled."""

    async def body(s: Sites, _link: EdgeLink) -> None:
        import asyncio

        delays = iter([0.5])
        s.a.disks[VOL].delay = lambda: next(delays, 0.0)
        lu = s.a.array.luns[(TARGET, VOL)].lu
        data = b"".join(struct.pack("<QQ", 4444, 40 + i) * (BLOCK // 16) for i in range(4))
        inflight = asyncio.get_running_loop().create_task(lu.store(40 * BLOCK, data, False))
        await asyncio.sleep(0.01)
        create = asyncio.get_running_loop().create_task(s.create())
        await asyncio.sleep(0.1)  # pair formation is waiting for the slow write
        assert not create.done() and not lu.write_protected, "the P-VOL refused host writes meanwhile"
        await s.write(80)  # journaled
        await create
        await inflight
        await s.synced()
        assert s.same()

    run(tmp_path, body)

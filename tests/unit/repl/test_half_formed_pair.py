"""A pair the primary set up but the secondary never confirmed (the paircreate reply was lost and
the operator did not repeat it), then a takeover and a reverse resync.

Found by the simulator's long run (seed 16156: delete, lost_reply, takeover): the old primary
reported writes for that volume as lost, the reverse resync looked them up among its own pairs
(KeyError: 1, on every repeat, the pair stuck in SSWS/FENCED for good), and the old primary would
have turned the half-formed pair into an S-VOL the new primary knows nothing of. Now the reverse
resync copies back only volumes paired on both sides, and the demote names the pairs that stay,
so the old primary drops the half-formed one (its volume simple and writable again)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from storaged.cmddev.dispatch import CommandError
from storaged.sim.disk import BLOCK, SimDisk
from storaged.sim.loop import run_virtual

from .test_repl_defects import JNL, TARGET, VOL, EdgeLink, G, InlineExecutor, Sites, until

VOL2 = 1


class TwoVolumeSites(Sites):
    """The usual two arrays, each with a second data volume (LUN 1)."""

    def __init__(self, base: str, journal: int) -> None:
        super().__init__(base, journal)
        for node in (self.a, self.b):
            node.disks[VOL2] = SimDisk(f"{node.name}:{VOL2}", 1 << 20, self.world.rng, 1.0, lambda: 0.0)


def run_two(tmp_path: Any, body: Callable[[Sites, EdgeLink], Awaitable[None]]) -> None:
    sites = TwoVolumeSites(str(tmp_path), 256 << 10)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(InlineExecutor(max_workers=1))
        await body(sites, await sites.boot())

    run_virtual(main, sites.world.clock, sites.world.rng)


#: the second pair's paircreate, as the secondary's operator gives it
PAIR2 = {"group": G, "peer": "site-a", "pvol": VOL2, "svol": VOL2, "pjnl": JNL, "sjnl": JNL}


async def half_form(s: Sites, link: EdgeLink) -> None:
    """Pair 0 formed; pair 1 set up on the primary only (the reply to its paircreate lost)."""
    await s.create()
    link.lose_reply_of = "repl.prepare_primary"
    with pytest.raises(CommandError):
        await s.b.array.repl.pair_create(dict(PAIR2), "test")


def test_a_reverse_resync_with_a_pair_only_the_old_primary_had(tmp_path: Any) -> None:
    async def body(s: Sites, link: EdgeLink) -> None:
        await half_form(s, link)
        assert [p.pvol for p in s.group(s.a).pairs] == [VOL, VOL2]
        assert [p.svol for p in s.group(s.b).pairs] == [VOL]
        await s.write(0)
        lu2 = s.a.array.luns[(TARGET, VOL2)].lu
        await lu2.store(0, struct.pack("<QQ", 77, 0) * (BLOCK // 16), False)  # journaled on site-a only
        await s.synced()
        s.a.crash()
        await s.b.array.repl.takeover(G, dry_run=False)
        assert s.state(s.b) == "SSWS", s.states()
        await s.a.boot()
        await s.b.array.repl.resync_swap(G, force=True)
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR", 10.0), s.states()
        assert s.group(s.b).role == "primary" and [p.pvol for p in s.group(s.b).pairs] == [VOL]
        assert s.group(s.a).role == "secondary" and [p.svol for p in s.group(s.a).pairs] == [VOL]
        assert not s.a.array.luns[(TARGET, VOL2)].lu.write_protected  # simple again, not an orphan S-VOL
        r = await s.a.array.repl.syncwait(G, None, 10.0)  # site-a is the secondary now
        assert r["result"] == "DONE", r
        assert s.same()

    run_two(tmp_path, body)


def test_a_write_on_the_dropped_volume_survives_a_power_cut_after_the_drop(tmp_path: Any) -> None:
    """The dropped volume's writes were covered by the journal and its activity log, both thrown
    away with the old primary's role: the volume is now flushed before they go (review finding)."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await half_form(s, link)
        lu2 = s.a.array.luns[(TARGET, VOL2)].lu
        await s.synced()
        link.drop_request_of = "repl.journal_status"  # the primary looks unreachable: an SVOL takeover
        await s.b.array.repl.takeover(G, dry_run=False)
        await lu2.store(0, struct.pack("<QQ", 77, 0) * (BLOCK // 16), False)  # answered on site-a
        assert await until(lambda: s.state(s.a) == "FENCED", 5.0), s.states()
        await s.b.array.repl.resync_swap(G, force=True)
        assert await until(lambda: s.group(s.a).role == "secondary", 5.0), s.states()
        s.a.disks[VOL2].keep_prob = 0.0  # a power cut loses whatever is not durable
        s.a.crash()
        await s.a.boot()
        assert s.a.disks[VOL2].tags(0, BLOCK) == [77], "the dropped volume lost a write it had answered"

    run_two(tmp_path, body)


def test_a_paircreate_repeated_after_the_half_formed_pair_was_promoted_forms_it(tmp_path: Any) -> None:
    """The secondary's "copy done" report (sent again when it sees the primary in COPY, in case an
    earlier report was lost) promoted the half-formed pair to PAIR on the primary, and the
    operator's repeated paircreate was then refused for good ("already paired": review). A repeat
    now copies that volume whole and forms the pair."""

    async def body(s: Sites, link: EdgeLink) -> None:
        await s.create()
        await s.write(0)
        lu2 = s.a.array.luns[(TARGET, VOL2)].lu
        await lu2.store(0, struct.pack("<QQ", 91, 0) * (BLOCK // 16), False)  # before any pair of it
        link.lose_reply_of = "repl.prepare_primary"
        with pytest.raises(CommandError):
            await s.b.array.repl.pair_create(dict(PAIR2), "test")
        await lu2.store(8 * BLOCK, struct.pack("<QQ", 92, 8) * (BLOCK // 16), False)  # journaled, skipped there
        assert await until(lambda: s.state(s.a) == "PAIR", 10.0), s.states()  # promoted by the report
        await s.b.array.repl.pair_create(dict(PAIR2), "test")  # the operator repeats it
        await lu2.store(16 * BLOCK, struct.pack("<QQ", 93, 16) * (BLOCK // 16), False)
        assert await until(lambda: s.state(s.a) == s.state(s.b) == "PAIR", 10.0), s.states()
        r = await s.b.array.repl.syncwait(G, None, 10.0)
        assert r["result"] == "DONE", r
        assert [p.svol for p in s.group(s.b).pairs] == [VOL, VOL2]
        assert s.a.disks[VOL2].cur == s.b.disks[VOL2].cur, "the repeated pair's S-VOL differs from its P-VOL"

    run_two(tmp_path, body)

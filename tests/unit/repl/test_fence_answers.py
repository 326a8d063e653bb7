"""A fence must not return while a host write admitted before it is still unanswered.

Found by the simulator's long run (seed 17982: journal_full, takeover): a FUA write had landed on
the P-VOL when the fence drained the write order, but its flush was still running; the takeover
made the S-VOLs writable and only then did the old primary answer the write: two sides
acknowledging writes at once. The fence now also waits for the answers."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from storaged.sim.disk import BLOCK

from .test_repl_defects import G, TARGET, VOL, EdgeLink, Sites, run


def test_a_fence_waits_for_the_flush_of_a_fua_write_admitted_before_it(tmp_path: Any) -> None:
    async def body(s: Sites, _link: EdgeLink) -> None:
        await s.create()
        await s.synced()
        delays = iter([0.0, 0.5])  # the volume write lands at once, its FUA flush takes 0.5 s
        s.a.disks[VOL].delay = lambda: next(delays, 0.0)
        lu = s.a.array.luns[(TARGET, VOL)].lu
        data = b"".join(struct.pack("<QQ", 5151, 8 + i) * (BLOCK // 16) for i in range(2))
        write = asyncio.get_running_loop().create_task(lu.store(8 * BLOCK, data, True))
        await asyncio.sleep(0.05)  # landed, flushing
        assert not write.done()
        await s.b.array.repl.takeover(G, dry_run=False)
        assert write.done(), "the old primary answered a write after the takeover made the other side writable"
        await write

    run(tmp_path, body)

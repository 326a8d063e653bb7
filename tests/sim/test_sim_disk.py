"""The simulated disk's crash model: what survives a power cut, block by block.

An unaligned write (the activity log's second copy starts mid-block, at 512 + 1792 bytes) was
applied at a crash in 512-byte slices of the write's own data, so its last, shorter slice replaced a
whole block's worth of the disk image: the image shrank and everything after it moved, and a
flushed activity-log copy read back as garbage (seed 13579 of the long run)."""

from __future__ import annotations

import random

from storaged.sim.disk import BLOCK, SimDisk


def _disk(keep: float) -> SimDisk:
    return SimDisk("d", 8 * BLOCK, random.Random(1), keep, lambda: 0.0)


def test_an_unaligned_write_kept_at_a_crash_changes_only_its_own_bytes() -> None:
    d = _disk(keep=1.0)
    d.apply(0, b"\xaa" * (8 * BLOCK), forced=False)
    d.make_durable(d.wid)
    d.apply(BLOCK + 100, b"\x55" * (2 * BLOCK + 50), forced=False)  # starts and ends mid-block
    d.crash()
    assert len(d.dur) == len(d.cur) == 8 * BLOCK
    expected = bytearray(b"\xaa" * (8 * BLOCK))
    expected[BLOCK + 100 : 3 * BLOCK + 150] = b"\x55" * (2 * BLOCK + 50)
    assert bytes(d.dur) == bytes(expected)


def test_an_unaligned_write_lost_at_a_crash_leaves_the_durable_bytes() -> None:
    d = _disk(keep=0.0)
    d.apply(0, b"\xaa" * (8 * BLOCK), forced=True)
    d.apply(BLOCK + 100, b"\x55" * (2 * BLOCK + 50), forced=False)
    d.crash()
    assert bytes(d.dur) == b"\xaa" * (8 * BLOCK)


def test_a_torn_unaligned_write_keeps_or_loses_whole_disk_blocks_of_it() -> None:
    for seed in range(50):
        d = SimDisk("d", 8 * BLOCK, random.Random(seed), 0.5, lambda: 0.0)
        d.apply(300, b"\x55" * (5 * BLOCK), forced=False)
        d.crash()
        assert len(d.dur) == 8 * BLOCK
        for b in range(8):  # each disk block is all old or all new over the write's range in it
            lo, hi = max(300, b * BLOCK), min(300 + 5 * BLOCK, (b + 1) * BLOCK)
            if lo < hi:
                assert len(set(d.dur[lo:hi])) == 1
        assert d.dur[:300] == bytes(300) and d.dur[300 + 5 * BLOCK :] == bytes(8 * BLOCK - 300 - 5 * BLOCK)

"""The sans-IO scheduler under a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storaged.faultproxy import LinkFaults, Scheduler


def drive(faults: LinkFaults, pushes: list[tuple[float, bytes]], *, changes: dict[float, dict] | None = None,
          sched: Scheduler | None = None, until: float = 1e6) -> list[tuple[float, bytes]]:
    """Run the scheduler like the pump does, jumping the clock from event to event: returns the
    (time, bytes) it releases. ``changes`` maps a time to fault changes applied then."""
    sched = sched or Scheduler(random.Random(1))
    pushes = sorted(pushes, key=lambda p: p[0])
    changes = dict(sorted((changes or {}).items()))
    out: list[tuple[float, bytes]] = []
    now = 0.0
    for _ in range(1_000_000):
        for t in [t for t in changes if t <= now]:
            faults.update(**changes.pop(t))
        while pushes and pushes[0][0] <= now:
            sched.push(pushes.pop(0)[1], now, faults)
        while data := sched.pop(now, faults):
            out.append((now, data))
        if sched.broken:
            return out
        candidates = [t for t in (sched.next_wakeup(now, faults),
                                  pushes[0][0] if pushes else None,
                                  min(changes) if changes else None) if t is not None]
        if not candidates or min(candidates) > until:
            return out
        nxt = min(candidates)
        assert nxt >= now
        now = nxt
    raise AssertionError("scheduler did not settle")


def joined(out: list[tuple[float, bytes]]) -> bytes:
    return b"".join(d for _, d in out)


def test_no_faults_releases_at_once_unchanged() -> None:
    out = drive(LinkFaults(), [(0.0, b"abc"), (0.5, b"def")])
    assert out == [(0.0, b"abc"), (0.5, b"def")]


def test_delay_is_added_to_every_chunk() -> None:
    out = drive(LinkFaults(delay=0.25), [(0.0, b"a"), (0.1, b"b"), (1.0, b"c")])
    assert out == [(0.25, b"a"), (pytest.approx(0.35), b"b"), (1.25, b"c")]


def test_push_returns_release_time_and_pop_waits_for_it() -> None:
    s, f = Scheduler(), LinkFaults(delay=0.5)
    assert s.push(b"x", 10.0, f) == 10.5
    assert s.pop(10.4, f) == b""
    assert s.next_wakeup(10.4, f) == 10.5
    assert s.pop(10.5, f) == b"x"
    assert s.next_wakeup(10.5, f) is None


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), delay=st.floats(0, 0.5), jitter=st.floats(0.001, 1.0),
       gaps=st.lists(st.floats(0, 0.3), min_size=1, max_size=40))
def test_jitter_never_reorders(seed: int, delay: float, jitter: float, gaps: list[float]) -> None:
    faults = LinkFaults(delay=delay, jitter=jitter)
    times = [sum(gaps[:i + 1]) for i in range(len(gaps))]
    chunks = [(t, i.to_bytes(2, "big") * (i % 5 + 1)) for i, t in enumerate(times)]
    out = drive(faults, chunks, sched=Scheduler(random.Random(seed)))
    assert joined(out) == b"".join(c for _, c in chunks)  # same bytes, same order
    assert [t for t, _ in out] == sorted(t for t, _ in out)
    # every chunk waits at least `delay` and, on its own account, at most delay + jitter; it can also
    # wait behind the chunk before it (that is what keeps the order)
    prev = -math.inf
    for (arrived, _), (released, _) in zip(chunks, out):
        assert released >= arrived + delay - 1e-9
        assert released <= max(prev, arrived + delay + jitter) + 1e-9
        prev = released


def test_jitter_varies_latency() -> None:
    out = drive(LinkFaults(jitter=0.1), [(float(i), b"x") for i in range(50)])
    latencies = {round(t - i, 6) for i, (t, _) in enumerate(out)}
    assert len(latencies) > 40 and all(0 <= lat <= 0.1 for lat in latencies)


def test_bandwidth_paces_with_token_bucket() -> None:
    faults = LinkFaults(bandwidth=1000)  # default burst: 20 ms of bandwidth = 20 bytes
    assert faults.burst_bytes() == 20
    out = drive(faults, [(0.0, bytes(range(250)) * 4)])
    assert joined(out) == bytes(range(250)) * 4
    assert all(len(d) <= 20 for _, d in out)
    assert out[-1][0] == pytest.approx((1000 - 20) / 1000)  # first 20 bytes at once, then 1000 B/s
    sent = 0
    for t, d in out:
        sent += len(d)
        assert sent <= 20 + 1000 * t + 1e-6  # never ahead of the bucket


def test_bandwidth_idle_time_does_not_bank_more_than_burst() -> None:
    faults = LinkFaults(bandwidth=100, burst=10)
    out = drive(faults, [(0.0, b"a" * 10), (50.0, b"b" * 30)])
    assert out[0] == (0.0, b"a" * 10)
    # after 50 s idle the bucket is full (10) again, not 5000 bytes deep
    b_times = [t for t, d in out if d.startswith(b"b")]
    assert b_times[0] == 50.0 and out[-1][0] == pytest.approx(50.2)


def test_bandwidth_and_delay_combine() -> None:
    out = drive(LinkFaults(delay=1.0, bandwidth=100, burst=10), [(0.0, b"z" * 50)])
    assert out[0][0] == 1.0 and out[-1][0] == pytest.approx(1.4)


def test_bandwidth_can_be_lifted_mid_transfer() -> None:
    out = drive(LinkFaults(bandwidth=10, burst=1), [(0.0, b"q" * 100)], changes={2.0: {"bandwidth": None}})
    assert joined(out) == b"q" * 100
    assert out[-1][0] == 2.0  # the rest went at once when the limit was lifted


def test_stall_holds_then_releases_in_order() -> None:
    faults = LinkFaults(stall=True)
    s = Scheduler()
    s.push(b"one ", 0.0, faults)
    assert s.pop(0.0, faults) == b"" and s.next_wakeup(0.0, faults) is None
    out = drive(faults, [(0.1, b"two "), (0.2, b"three")], sched=s, changes={1.0: {"stall": False}})
    assert out == [(1.0, b"one "), (1.0, b"two "), (1.0, b"three")]
    assert s.queued_bytes == 0


def test_stall_does_not_shorten_a_delay() -> None:
    out = drive(LinkFaults(delay=2.0, stall=True), [(0.0, b"a"), (0.5, b"b")],
                changes={1.0: {"stall": False}})
    assert out == [(2.0, b"a"), (2.5, b"b")]


def test_stall_and_resume_midway_under_bandwidth() -> None:
    out = drive(LinkFaults(bandwidth=100, burst=10), [(0.0, b"x" * 40)],
                changes={0.15: {"stall": True}, 5.0: {"stall": False}})
    assert joined(out) == b"x" * 40
    assert [t for t, _ in out if t < 5] == [0.0, pytest.approx(0.1)]
    assert out[2][0] == 5.0


def test_drop_after_bytes_releases_exactly_n_then_breaks() -> None:
    faults = LinkFaults(drop_after_bytes=30)
    s = Scheduler()
    s.push(b"a" * 25, 0.0, faults)
    s.push(b"b" * 25, 0.0, faults)
    assert s.pop(0.0, faults) == b"a" * 25 and not s.broken
    assert s.pop(0.0, faults) == b"b" * 5
    assert s.broken and s.released == 30 and s.queued_bytes == 20
    assert s.pop(0.0, faults) == b"" and s.next_wakeup(0.0, faults) is None


def test_drop_after_zero_breaks_before_anything() -> None:
    s, f = Scheduler(), LinkFaults(drop_after_bytes=0)
    assert s.pop(0.0, f) == b"" and s.broken


def test_drop_after_bytes_under_bandwidth() -> None:
    out = drive(LinkFaults(bandwidth=100, burst=10, drop_after_bytes=25), [(0.0, b"y" * 100)])
    assert joined(out) == b"y" * 25
    assert out[-1][0] == pytest.approx(0.15)


def test_loss_adds_penalty_and_blocks_what_follows() -> None:
    s = Scheduler(random.Random(7))
    out = drive(LinkFaults(loss=1.0, loss_penalty=0.2), [(0.0, b"a"), (0.05, b"b")], sched=s)
    assert out == [(0.2, b"a"), (pytest.approx(0.25), b"b")]
    assert s.penalties == 2


def test_loss_probability_is_per_chunk() -> None:
    s = Scheduler(random.Random(3))
    out = drive(LinkFaults(loss=0.3, loss_penalty=10.0), [(i * 100.0, b"c") for i in range(200)], sched=s)
    penalised = sum(1 for i, (t, _) in enumerate(out) if t - i * 100.0 >= 10.0)
    assert penalised == s.penalties and 30 < penalised < 90


def test_eof_finishes_after_drain() -> None:
    s, f = Scheduler(), LinkFaults(delay=1.0)
    s.push(b"last", 0.0, f)
    s.eof()
    assert not s.finished
    assert s.pop(1.0, f) == b"last"
    assert s.finished
    with pytest.raises(ValueError):
        s.push(b"more", 2.0, f)


def test_faults_read_per_call_so_changes_apply_to_new_chunks() -> None:
    f = LinkFaults(delay=1.0)
    s = Scheduler()
    s.push(b"a", 0.0, f)
    f.delay = 0.0
    s.push(b"b", 0.1, f)  # no delay now, but still behind "a"
    assert s.pop(0.5, f) == b""
    assert s.pop(1.0, f) == b"a" and s.pop(1.0, f) == b"b"

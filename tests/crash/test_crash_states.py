"""Crash states of the primary's journal and volume write path (tests/crash/explorer.py).

The main test checks well over 1,000 crash states. The others run the same explorer against the
write path with one fix taken away and expect it to find the defect, so the explorer is shown to
be able to fail. A failure message names the seed and the crash state(s); replay one seed with
``explorer.run(range(seed, seed + 1), Config())`` (the states are drawn from the seed).
"""

from __future__ import annotations

import logging

import pytest

from storaged.repl import journal as journal_mod

from .explorer import Config, run

SEEDS = range(40)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("storaged.repl").setLevel(logging.ERROR)


def test_every_crash_state_recovers_to_a_consistent_durable_pair() -> None:
    report = run(SEEDS, Config())
    assert report.states >= 1000
    assert not report.violations, f"{len(report.violations)} of {report.states} crash states violate:\n" + \
        "\n".join(report.violations[:10])


def test_the_explorer_finds_stale_entries_replayed_without_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1: with the generation check off (the scan accepts any chain, as before), a
    never-acknowledged write of the first life comes back after the second crash."""
    monkeypatch.setattr(journal_mod, "generation_ok", lambda prev, cur, limit: True)
    report = run(SEEDS, Config(), stop_at_first=True)
    assert any("resurrected" in v for v in report.violations), report.violations[:3]


def test_the_explorer_finds_acquired_entries_a_power_cut_took_away() -> None:
    """Defect 4, first half: a secondary that takes what is committed rather than durable holds
    entries the primary's recovery no longer has."""
    report = run(SEEDS, Config(acquire="committed"), stop_at_first=True)
    assert any("acquired by the secondary is lost" in v or "durable point" in v for v in report.violations), \
        report.violations[:3]


def test_the_explorer_finds_volume_writes_whose_entries_were_lost_without_the_activity_log() -> None:
    """Defect 4, second half: without the activity log a P-VOL keeps blocks whose journal
    entries a power cut lost; the secondary never receives them."""
    report = run(SEEDS, Config(activity=False), stop_at_first=True)
    assert any("differs from what the secondary receives" in v for v in report.violations), report.violations[:3]


def test_the_explorer_finds_purges_that_run_ahead_of_the_volume_writes() -> None:
    """A purge that persists journal-out without waiting for the volume writes of the purged
    entries and flushing the P-VOLs (the old purge) loses writes the secondary already has."""
    report = run(SEEDS, Config(purge_flushes=False), stop_at_first=True)
    assert any("differs from what the secondary receives" in v for v in report.violations), report.violations[:3]

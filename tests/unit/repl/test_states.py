"""The pair-state table: every change goes through it, and docs/replication.md shows it as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storaged.cmddev.block import ResultStatus
from storaged.cmddev.dispatch import CommandError
from storaged.repl.model import Group, Pair, merge_ranges
from storaged.repl.states import (
    JOURNALING,
    PRIMARY_WRITABLE,
    TABLE,
    Event,
    InvalidTransition,
    State,
    next_state,
    table_rows,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "replication.md"


def test_every_state_has_a_row_and_every_row_a_known_target() -> None:
    assert set(TABLE) == set(State)
    for row in TABLE.values():
        for target in row.values():
            assert target is None or target in State


def test_a_change_the_table_does_not_list_is_refused() -> None:
    with pytest.raises(InvalidTransition):
        next_state(State.SSWS, Event.SPLIT)
    with pytest.raises(InvalidTransition):
        next_state(State.PSUE, Event.COPY_DONE)  # a copy cannot finish a suspended group
    with pytest.raises(InvalidTransition):
        next_state(State.COPY, Event.TAKEOVER)  # an S-VOL mid-copy is inconsistent


def test_a_fenced_primary_returns_to_the_state_it_was_fenced_in() -> None:
    assert next_state(State.FENCED, Event.CONFIRM, State.PAIR) == State.PAIR
    assert next_state(State.FENCED, Event.RELEASE, State.COPY) == State.COPY
    assert next_state(State.FENCED, Event.RELEASE, None) == State.PSUE


def test_fenced_takes_no_host_writes_and_suspended_states_track_them() -> None:
    assert State.FENCED not in PRIMARY_WRITABLE
    assert State.SSWS not in PRIMARY_WRITABLE
    assert JOURNALING == {State.COPY, State.PAIR}
    assert {State.PSUS, State.PSUE} <= PRIMARY_WRITABLE - JOURNALING


def test_group_apply_refuses_with_wrong_state_and_changes_nothing() -> None:
    g = Group("g1", "primary", "site-b", 5, 5, [Pair(0, 0, "PSUS")], state="PSUS")
    with pytest.raises(CommandError) as exc:
        g.apply(Event.COPY_DONE)
    assert exc.value.status == ResultStatus.WRONG_STATE
    assert g.state == "PSUS" and g.pairs[0].state == "PSUS"


def test_group_apply_keeps_the_state_before_a_fence() -> None:
    g = Group("g1", "primary", "site-b", 5, 5, [Pair(0, 0, "PAIR")], state="PAIR")
    g.apply(Event.FENCE, "restarted")
    assert (g.state, g.before_fence, g.error) == ("FENCED", "PAIR", "restarted")
    g.apply(Event.FENCE, "peer took over")  # a second fence keeps the first's origin
    assert g.before_fence == "PAIR"
    g.apply(Event.CONFIRM)
    assert (g.state, g.before_fence) == ("PAIR", "")


def test_adding_a_pair_leaves_the_paired_ones_in_pair() -> None:
    g = Group("g1", "secondary", "site-a", 5, 5, [Pair(0, 0, "PAIR"), Pair(1, 1, "COPY")], state="PAIR")
    g.apply(Event.CREATE)
    assert g.state == "COPY" and [p.state for p in g.pairs] == ["PAIR", "COPY"]


def test_the_documented_table_is_the_code_table() -> None:
    text = DOC.read_text()
    block = text.split("<!-- transition table -->")[1].split("<!-- end of transition table -->")[0]
    rows = set(re.findall(r"^\| (\w+) \| ([\w-]+) \| ([^|]+?) \|$", block, flags=re.M))
    assert rows - {("from", "event", "to")} == set(table_rows())


def test_merge_ranges_joins_touching_and_overlapping() -> None:
    assert merge_ranges([(10, 5), (0, 10), (30, 1), (12, 10), (40, 0)]) == [[0, 22], [30, 1]]

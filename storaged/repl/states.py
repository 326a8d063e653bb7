"""Pair and journal-group states, and the one table every state change goes through.

Modelled on DRBD's ``drbd_state.c``: a change is an *event* applied to the current state; the
table says what the event leads to, and an event the table does not list for the current state is
refused before any side effect runs. Pure: no I/O, no clock, so the whole table is unit-tested and
``docs/replication.md`` shows it as it is. A script-free check that the doc and the table agree
lives in the tests.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """HORCM's pair states, plus FENCED for a primary whose host writes are stopped."""

    SMPL = "SMPL"  # not paired
    COPY = "COPY"  # initial copy or resync copy running
    PAIR = "PAIR"  # copy done; journal replication running
    PSUS = "PSUS"  # split by the user
    PSUE = "PSUE"  # suspended by an error or a full journal
    SSWS = "SSWS"  # secondary made writable by a takeover
    FENCED = "FENCED"  # primary: P-VOLs read-only (the peer took over, or the role is not yet confirmed)


class Event(StrEnum):
    CREATE = "create"  # paircreate (a new group, or one more pair in a group)
    COPY_DONE = "copy-done"  # the initial or resync copy finished
    SPLIT = "split"  # pairsplit
    FAIL = "fail"  # journal full, journal or link failure, the primary reported PSUE
    RESYNC = "resync"  # pairresync
    TAKEOVER = "takeover"  # S-VOL takeover: the secondary becomes writable
    SWAP = "swap"  # roles reversed with both sides equal (takeover while the primary answers)
    REVERSE = "reverse"  # pairresync --swap after SSWS: copy back what differs, roles reversed
    FENCE = "fence"  # stop host writes on a primary
    CONFIRM = "confirm"  # the peer confirmed this primary's role (after a restart): writes resume
    RELEASE = "release"  # an operator released a fenced primary by hand (pairrelease)
    DELETE = "delete"  # pairdelete


class InvalidTransition(Exception):
    """An event the table does not allow in the current state; nothing has been changed."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event.value} is not possible in {state.value}")
        self.state = state
        self.event = event


S, E = State, Event
#: None as a target means "back to the state before the fence" (kept with the group)
TABLE: dict[State, dict[Event, State | None]] = {
    S.SMPL: {E.CREATE: S.COPY},
    # no SPLIT in COPY: the S-VOLs hold a fuzzy copy until restore passes its end, and PSUS promises
    # a consistent S-VOL (pairdelete, or wait for PAIR)
    S.COPY: {E.CREATE: S.COPY, E.COPY_DONE: S.PAIR, E.FAIL: S.PSUE, E.FENCE: S.FENCED, E.DELETE: S.SMPL},
    S.PAIR: {E.CREATE: S.COPY, E.SPLIT: S.PSUS, E.FAIL: S.PSUE, E.TAKEOVER: S.SSWS, E.SWAP: S.PAIR,
             E.FENCE: S.FENCED, E.DELETE: S.SMPL},
    S.PSUS: {E.RESYNC: S.COPY, E.FAIL: S.PSUE, E.TAKEOVER: S.SSWS, E.FENCE: S.FENCED, E.DELETE: S.SMPL},
    S.PSUE: {E.RESYNC: S.COPY, E.FAIL: S.PSUE, E.TAKEOVER: S.SSWS, E.FENCE: S.FENCED, E.DELETE: S.SMPL},
    S.SSWS: {E.REVERSE: S.COPY, E.DELETE: S.SMPL},
    S.FENCED: {E.FENCE: S.FENCED, E.CONFIRM: None, E.RELEASE: None, E.SWAP: S.PAIR, E.REVERSE: S.COPY,
               E.FAIL: S.FENCED, E.DELETE: S.SMPL},
}

#: where host writes to a P-VOL are accepted (journaled in COPY/PAIR, tracked in a bitmap otherwise)
PRIMARY_WRITABLE = frozenset({S.COPY, S.PAIR, S.PSUS, S.PSUE})
#: where the primary appends host writes to the journal
JOURNALING = frozenset({S.COPY, S.PAIR})
#: where the secondary acquires and restores journal entries
REPLICATING = frozenset({S.PAIR, S.PSUE})


def next_state(state: State | str, event: Event, before_fence: State | str | None = None) -> State:
    """The state ``event`` leads to from ``state``; raises :class:`InvalidTransition` if none.

    ``before_fence`` is what a fenced primary returns to on CONFIRM or RELEASE."""
    current = State(state)
    targets = TABLE[current]
    if event not in targets:
        raise InvalidTransition(current, event)
    target = targets[event]
    if target is None:
        if before_fence is None or State(before_fence) in (S.FENCED, S.SMPL):
            return S.PSUE  # nothing better known: writes resume, tracked in the bitmap
        return State(before_fence)
    return target


def allowed(state: State | str, event: Event) -> bool:
    return event in TABLE[State(state)]


def table_rows() -> list[tuple[str, str, str]]:
    """(from, event, to) rows for documentation and tests."""
    return [(s.value, e.value, t.value if t is not None else "state before the fence")
            for s, row in TABLE.items() for e, t in row.items()]

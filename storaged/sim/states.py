"""Observed state changes checked against the one pair state table, ``storaged.repl.states``.

The simulator samples each side's (role, state) after every event loop step, without looking at
which event the code applied, so a change made behind the table's back (a state set directly, a
role change that is not a swap) or two changes in one step show up as a change no single event
explains. Roles are not in the table; the states' definitions fix them: SSWS is a secondary's
state, FENCED a primary's, and the role changes only by a swap (SWAP) or a reverse resync
(REVERSE).
"""

from __future__ import annotations

from ..repl.states import TABLE, Event, InvalidTransition, State, next_state

ROLE_OF: dict[str, str] = {State.SSWS: "secondary", State.FENCED: "primary"}
ROLE_CHANGES: frozenset[Event] = frozenset({Event.SWAP, Event.REVERSE})


def events_between(old: tuple[str, str], new: tuple[str, str], before_fence: str = "") -> list[Event]:
    """The events of the table that lead from ``old`` to ``new`` ((role, state); SMPL has no
    role). ``before_fence`` is what the old side kept to return to from FENCED."""
    (orole, ostate), (nrole, nstate) = old, new
    if ROLE_OF.get(nstate, nrole) != nrole:
        return []
    found = []
    for event in TABLE[State(ostate)]:
        if orole and nrole and orole != nrole and event not in ROLE_CHANGES:
            continue
        try:
            target = next_state(ostate, event, before_fence or None)
        except InvalidTransition:  # pragma: no cover - the event is in the row
            continue
        if target == nstate:
            found.append(event)
    if ostate == State.SMPL or nstate == State.SMPL:  # a group appears (create) or goes (delete)
        return [e for e in found if e in (Event.CREATE, Event.DELETE)]
    return found


def allowed_transition(old: tuple[str, str], new: tuple[str, str], before_fence: str = "") -> bool:
    return bool(events_between(old, new, before_fence))

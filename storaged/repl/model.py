"""The pair management table (spec Fig. 10): journal groups, their pairs and pointers.

One :class:`Group` per journal group on this array, persisted as JSON by the manager. State changes
go through :meth:`Group.apply`, which checks them against the table in :mod:`.states`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError
from .states import Event, InvalidTransition, State, next_state


#: ``Group.copy_until_seq`` while a copy's end is not known yet (above any sequence number)
COPY_END_UNKNOWN = 1 << 62


@dataclass
class Pair:
    pvol: int
    svol: int
    state: str = "COPY"
    size: int = 0
    copied: int = 0

    @property
    def copy_percent(self) -> float:
        return 100.0 if self.state not in ("COPY",) else round(100.0 * self.copied / self.size, 1) if self.size else 0.0


@dataclass
class Group:
    """One row set of the pair management table (Fig. 10) plus the journal pointers (Fig. 15)."""

    name: str
    role: str  # "primary" or "secondary"
    peer: str  # the other array
    pjnl: int
    sjnl: int
    pairs: list[Pair] = field(default_factory=list)
    state: str = "COPY"
    error: str = ""
    # primary: journal-out (persisted on purge); journal-in is found by scanning
    out_pos: int = 0
    out_seq: int = 1
    dirty: dict[str, list[int]] = field(default_factory=dict)  # volume -> regions written while suspended
    #: primary, from a resync until the secondary's copy is done: entries from here on presume the
    #: secondary copied the regions that resync handed out (a secondary that missed the resync,
    #: its reply lost, must not restore them); ``copy_restarted``: the journal restarted there
    #: primary after a swap or reverse resync: the ``repl.become_secondary`` request the old
    #: primary has not answered yet, persisted and repeated until it is (else two primaries)
    demote: dict[str, Any] = field(default_factory=dict)
    #: how many swaps the pair has been through: a ``repl.become_secondary`` of an older swap (a
    #: repeat that arrives after the roles moved on) is refused, as a stale leader's in Raft
    term: int = 0
    copy_from_pos: int = 0
    copy_from_seq: int = 0
    copy_restarted: bool = False
    # secondary: the four pointers of Fig. 15, as (position, next sequence number)
    epoch: int = 0
    head: int = 0
    end: int = 0
    block_size: int = 512
    restored_pos: int = 0
    restored_seq: int = 1
    read_pos: int = 0
    read_seq: int = 1
    restored_time_ns: int = 0
    writable: bool = False  # S-VOL writable (split -rw, takeover)
    #: secondary in SSWS: the old primary has been fenced; primary: P-VOLs read-only (state FENCED)
    fenced: bool = False
    before_fence: str = ""  # primary: the state a CONFIRM or RELEASE returns to
    awaiting_confirm: bool = False  # primary: fenced at restart until the peer confirms the role
    #: this array's target holding the group's LUNs, and the peer's ("" = the array's first target)
    target: str = ""
    peer_target: str = ""
    #: secondary: regions still to copy (resync), per P-VOL, as [offset, length]; persisted so that
    #: neither a lost reply nor a restart loses them
    copy_regions: dict[str, list[list[int]]] = field(default_factory=dict)
    #: secondary: the S-VOLs are consistent once restored past this sequence number (the primary's
    #: journal-in when the copy ended); COPY_END_UNKNOWN from the start of a copy until then
    copy_until_seq: int = 0

    def pvols(self) -> list[int]:
        return [p.pvol for p in self.pairs]

    def svol_of(self, pvol: int) -> int:
        for p in self.pairs:
            if p.pvol == pvol:
                return p.svol
        raise KeyError(pvol)

    def svol_consistent(self) -> bool:
        """Secondary: the S-VOLs hold the P-VOLs after a prefix of the primary's write order. Not
        from the start of a copy (initial, resync, reverse) until restore passes its end: a copy
        reads the P-VOLs at different times, and one the primary stopped journaling during (PSUE)
        only becomes consistent by the next resync."""
        return self.state != State.COPY and not self.copy_regions and self.restored_seq >= self.copy_until_seq

    def copying(self) -> bool:
        """Some pair's volumes are still being copied (not just the journal being caught up)."""
        return any(p.state == State.COPY for p in self.pairs)

    def apply(self, event: Event, error: str = "") -> State:
        """Change state through the table (:mod:`.states`); refused with WRONG_STATE, and nothing
        changed, if the table has no such change from the current state."""
        try:
            new = next_state(self.state, event, self.before_fence or None)
        except InvalidTransition as exc:
            raise CommandError(ResultStatus.WRONG_STATE, f"group {self.name}: {exc}") from None
        if new == State.FENCED and self.state != State.FENCED:
            self.before_fence = self.state
        elif new == State.FENCED and event == Event.FAIL:
            self.before_fence = State.PSUE.value  # a failure while fenced: resume suspended, not PAIR
        elif new != State.FENCED:
            self.before_fence = ""
        if new == State.COPY:
            self.copy_until_seq = COPY_END_UNKNOWN  # a new copy: fuzzy until restored past its end
        elif event == Event.COPY_DONE:
            self.copy_until_seq = 0
            self.copy_from_pos = self.copy_from_seq = 0
            self.copy_restarted = False
        self.state = new.value
        self.error = error
        for p in self.pairs:
            if not (new == State.COPY and p.state == State.PAIR and event == Event.CREATE):
                p.state = new.value
        return new


def _wrong_state(group: Group, what: str, allowed: tuple[str, ...]) -> CommandError:
    return CommandError(ResultStatus.WRONG_STATE,
                        f"group {group.name} is in {group.state}; {what} needs {' or '.join(allowed)}")



def merge_ranges(ranges: list[tuple[int, int]]) -> list[list[int]]:
    """(offset, length) ranges sorted and joined where they touch or overlap, as [offset, length]."""
    out: list[list[int]] = []
    for off, n in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return out

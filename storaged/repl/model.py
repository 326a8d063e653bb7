"""The pair management table (spec Fig. 10): journal groups, their pairs and pointers.

One :class:`Group` per journal group on this array, persisted as JSON by the manager. State changes
go through :meth:`Group.apply`, which checks them against the table in :mod:`.states`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cmddev.block import ResultStatus
from ..cmddev.dispatch import CommandError


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
    fenced: bool = False  # primary: P-VOLs read-only because the peer took over

    def pvols(self) -> list[int]:
        return [p.pvol for p in self.pairs]

    def svol_of(self, pvol: int) -> int:
        for p in self.pairs:
            if p.pvol == pvol:
                return p.svol
        raise KeyError(pvol)

    def set_state(self, state: str, error: str = "") -> None:
        self.state = state
        self.error = error
        for p in self.pairs:
            if not (state == "COPY" and p.state == "PAIR"):
                p.state = state


def _wrong_state(group: Group, what: str, allowed: tuple[str, ...]) -> CommandError:
    return CommandError(ResultStatus.WRONG_STATE,
                        f"group {group.name} is in {group.state}; {what} needs {' or '.join(allowed)}")


"""The opcode table: what each command is called, who handles it, and how reservations treat it.

Like tgt's ``ops[256]`` in ``usr/sbc.c``, dispatch is a list index; opcodes that carry a service
action (9Eh, A3h, 5Eh, 5Fh, 83h, 84h) point at a dict keyed by the action instead. The same entries
feed REPORT SUPPORTED OPERATION CODES, so what we advertise is exactly what we dispatch.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .types import ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from .lu import LogicalUnit

Handler = Callable[["LogicalUnit", ScsiCommand], Awaitable[ScsiResult]]


class Access(enum.IntEnum):
    """How a command fares against a persistent reservation held by another I_T nexus.

    The SPC-4/SBC-3 "commands allowed in the presence of reservations" tables collapse to three
    classes: always allowed, allowed under Write Exclusive (reads), and conflicting unless the
    nexus is registered under a registrants-only/all-registrants reservation (writes and the rest).
    """

    ALLOW = 0
    READ = 1
    WRITE = 2


@dataclass(frozen=True, slots=True)
class OpInfo:
    opcode: int
    name: str
    handler: Handler
    #: CDB usage data for REPORT SUPPORTED OPERATION CODES; its length is the CDB length
    usage: bytes
    access: Access = Access.WRITE
    #: service action, for opcodes that dispatch on one
    sa: int | None = None
    #: allowed from other nexuses while an SPC-2 RESERVE is held
    res2_allowed: bool = False
    #: only offered on thin (LBPME=1) logical units
    thin_only: bool = False
    #: nominal / recommended timeouts (seconds) for RCTD
    timeout: int = 30


def usage(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


OpEntry = OpInfo | dict[int, OpInfo] | None


def build_table(infos: Iterable[OpInfo], thin: bool) -> list[OpEntry]:
    """A 256-slot dispatch list; service-action opcodes map to {sa: OpInfo}."""
    table: list[OpEntry] = [None] * 256
    for info in infos:
        if info.thin_only and not thin:
            continue
        if info.sa is None:
            table[info.opcode] = info
        else:
            sub = table[info.opcode]
            if sub is None:
                sub = {}
                table[info.opcode] = sub
            assert isinstance(sub, dict)
            sub[info.sa] = info
    return table


def iter_table(table: list[OpEntry]) -> Iterable[OpInfo]:
    for entry in table:
        if entry is None:
            continue
        if isinstance(entry, dict):
            yield from (entry[sa] for sa in sorted(entry))
        else:
            yield entry

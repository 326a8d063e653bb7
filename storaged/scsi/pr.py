"""Persistent reservations (SPC-4 5.13): registrations, the six reservation types, PREEMPT, and
the unit attentions each change owes to the other I_T nexuses.

State lives in memory only: APTPL is not supported (PTPL_C=0) and APTPL=1 is rejected, so a cold
reset or restart drops everything, which is what SPC-4 prescribes for APTPL=0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .ops import Access, Handler, OpInfo, usage
from .sense import Reason, ReservationConflict, ScsiError, cdb_error, param_error
from .types import Nexus, ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from .lu import LogicalUnit

# reservation types
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 0x1, 0x3, 0x5, 0x6, 0x7, 0x8
VALID_TYPES = frozenset((WE, EA, WE_RO, EA_RO, WE_AR, EA_AR))
ALL_REGISTRANTS = frozenset((WE_AR, EA_AR))
REGISTRANTS = frozenset((WE_RO, EA_RO, WE_AR, EA_AR))
WRITE_EXCLUSIVE = frozenset((WE, WE_RO, WE_AR))

# PERSISTENT RESERVE OUT service actions
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_AND_IGNORE = range(7)

#: REPORT CAPABILITIES type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR
TYPE_MASK = bytes((0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01))

MAX_REGISTRATIONS = 1024


class PersistentReservations:
    """Registrations and the reservation of one logical unit."""

    def __init__(self, lu: LogicalUnit) -> None:
        self.lu = lu
        self.generation = 0
        #: I_T nexus -> reservation key, in registration order
        self.registrations: dict[Nexus, int] = {}
        #: reservation type, 0 when not reserved
        self.type = 0
        #: holder for non-all-registrants types (None for all-registrants: every registrant holds it)
        self.holder: Nexus | None = None
        #: called with the preempted nexuses on PREEMPT AND ABORT so the transport can abort
        #: their tasks (SPC-4 5.13.11.4.5); the daemon wires it up
        self.on_abort: Callable[[list[Nexus]], None] | None = None

    # --- queries ----------------------------------------------------------------------------

    def is_holder(self, nexus: Nexus) -> bool:
        if not self.type:
            return False
        if self.type in ALL_REGISTRANTS:
            return nexus in self.registrations
        return self.holder == nexus

    def conflicts(self, nexus: Nexus, access: Access) -> bool:
        """SPC-4 table 63 / SBC-3 table 13 for a command of class ``access`` from ``nexus``."""
        rtype = self.type
        if self.is_holder(nexus):
            return False
        if rtype in REGISTRANTS and nexus in self.registrations:
            return False
        return not (access is Access.READ and rtype in WRITE_EXCLUSIVE)

    # --- mutations --------------------------------------------------------------------------

    def clear_all(self) -> None:
        """Power on without APTPL: forget everything."""
        self.registrations.clear()
        self.type = 0
        self.holder = None
        self.generation = 0

    def _release(self) -> None:
        self.type = 0
        self.holder = None

    def _unregister(self, nexus: Nexus) -> None:
        """Remove one registration; a holder's departure releases the reservation (5.13.11.2.2)."""
        del self.registrations[nexus]
        if not self.type:
            return
        if self.type in ALL_REGISTRANTS:
            if not self.registrations:
                self._release()
        elif self.holder == nexus:
            released_type = self.type
            self._release()
            if released_type in (WE_RO, EA_RO):
                self.lu.add_ua(Reason.RESERVATIONS_RELEASED, self.registrations)

    def _reserve(self, nexus: Nexus, rtype: int) -> None:
        self.type = rtype
        self.holder = None if rtype in ALL_REGISTRANTS else nexus

    def _remove_keyed(self, key: int, keep: Nexus) -> list[Nexus]:
        gone = [n for n, k in self.registrations.items() if k == key and n != keep]
        for n in gone:
            del self.registrations[n]
        return gone


# --- PERSISTENT RESERVE IN -----------------------------------------------------------------


async def prin(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if lu.res2 is not None:  # SPC-3 5.6.3: conflicts with an SPC-2 reservation, from anyone
        raise ReservationConflict
    sa = cdb[1] & 0x1F
    alloc = (cdb[7] << 8) | cdb[8]
    state = lu.pr
    if sa == 0:  # READ KEYS
        keys = b"".join(struct.pack(">Q", k) for k in state.registrations.values())
        data = struct.pack(">II", state.generation, len(keys)) + keys
    elif sa == 1:  # READ RESERVATION
        if state.type:
            holder = state.holder
            key = 0 if holder is None else state.registrations[holder]
            data = struct.pack(">IIQIBBH", state.generation, 16, key, 0, 0, state.type, 0)
        else:
            data = struct.pack(">II", state.generation, 0)
    elif sa == 2:  # REPORT CAPABILITIES
        # CRH=0, SIP_C=0, ATP_C=0, PTPL_C=0; TMV=1 with ALLOW COMMANDS=001b; PTPL_A=0
        data = struct.pack(">HBB", 8, 0x00, 0x80 | 0x10) + TYPE_MASK + b"\0\0"
    elif sa == 3:  # READ FULL STATUS
        body = bytearray()
        for nexus, key in state.registrations.items():
            holds = state.is_holder(nexus)
            tid = nexus.transport_id()
            body += struct.pack(
                ">Q4xBB4xHI", key, 0x01 if holds else 0, state.type if holds else 0, nexus.tpgt, len(tid)
            )
            body += tid
        data = struct.pack(">II", state.generation, len(body)) + body
    else:
        raise cdb_error(1, 4)
    return ScsiResult(Status.GOOD, data[:alloc])


# --- PERSISTENT RESERVE OUT ----------------------------------------------------------------


async def prout(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if lu.res2 is not None:
        raise ReservationConflict
    sa = cdb[1] & 0x1F
    scope, rtype = cdb[2] >> 4, cdb[2] & 0x0F
    plen = struct.unpack_from(">I", cdb, 5)[0]
    if sa > REGISTER_AND_IGNORE:  # REGISTER AND MOVE (7) is not supported
        raise cdb_error(1, 4)
    if plen != 24:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    data = cmd.data_out
    if data is None or len(data) < 24:
        raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
    rkey, sarkey = struct.unpack_from(">QQ", data, 0)
    flags = data[20]
    if flags & 0x08:  # SPEC_I_PT
        raise param_error(20, 3)
    if flags & 0x04:  # ALL_TG_PT
        raise param_error(20, 2)
    if flags & 0x01:  # APTPL: nothing survives power loss here
        raise param_error(20, 0)
    if sa in (RESERVE, RELEASE, PREEMPT, PREEMPT_AND_ABORT):
        if scope != 0:
            raise cdb_error(2, 7)
        if rtype not in VALID_TYPES:
            raise cdb_error(2, 3)
    nexus = cmd.nexus
    state = lu.pr
    registered = nexus in state.registrations

    if sa in (REGISTER, REGISTER_AND_IGNORE):
        if not registered:
            if sa == REGISTER and rkey != 0:
                raise ReservationConflict
            if sarkey:
                if len(state.registrations) >= MAX_REGISTRATIONS:
                    raise ScsiError(Reason.INSUFFICIENT_REGISTRATION_RESOURCES)
                state.registrations[nexus] = sarkey
                state.generation += 1
            return ScsiResult(Status.GOOD)
        if sa == REGISTER and rkey != state.registrations[nexus]:
            raise ReservationConflict
        if sarkey:
            state.registrations[nexus] = sarkey
        else:
            state._unregister(nexus)
        state.generation += 1
        return ScsiResult(Status.GOOD)

    # Every other service action needs a registration whose key matches.
    if not registered or state.registrations[nexus] != rkey:
        raise ReservationConflict

    if sa == RESERVE:
        if state.type:
            if state.is_holder(nexus) and state.type == rtype:
                return ScsiResult(Status.GOOD)
            raise ReservationConflict
        state._reserve(nexus, rtype)
    elif sa == RELEASE:
        if not state.is_holder(nexus):
            return ScsiResult(Status.GOOD)
        if state.type != rtype:
            raise ScsiError(Reason.INVALID_RELEASE_OF_PR)
        released = state.type
        state._release()
        if released not in (WE, EA):
            lu.add_ua(Reason.RESERVATIONS_RELEASED, state.registrations, exclude=nexus)
    elif sa == CLEAR:
        others = [n for n in state.registrations if n != nexus]
        state.registrations.clear()
        state._release()
        state.generation += 1
        lu.add_ua(Reason.RESERVATIONS_PREEMPTED, others)
    else:
        _preempt(lu, nexus, sarkey, rtype, abort=sa == PREEMPT_AND_ABORT)
    return ScsiResult(Status.GOOD)


def _preempt(lu: LogicalUnit, nexus: Nexus, sarkey: int, rtype: int, abort: bool) -> None:
    """PREEMPT / PREEMPT AND ABORT (SPC-4 5.13.11.4)."""
    state = lu.pr
    gone: list[Nexus]
    if not state.type or (state.type in ALL_REGISTRANTS and sarkey != 0):
        # Only registrations are preempted; the reservation (if any) stays as it is.
        if sarkey == 0:
            raise param_error(8)
        gone = state._remove_keyed(sarkey, keep=nexus)
        if not gone and sarkey not in state.registrations.values():
            raise ReservationConflict
        if state.type in ALL_REGISTRANTS and not state.registrations:
            state._release()
    elif state.type in ALL_REGISTRANTS:  # SARK == 0: everyone else goes, we take over
        gone = [n for n in state.registrations if n != nexus]
        for n in gone:
            del state.registrations[n]
        old = state.type
        state._reserve(nexus, rtype)
        if old != rtype:
            lu.add_ua(Reason.RESERVATIONS_RELEASED, state.registrations, exclude=nexus)
    else:
        holder_key = state.registrations.get(state.holder)  # type: ignore[arg-type]
        if sarkey == 0:
            raise param_error(8)
        if sarkey == holder_key:
            old = state.type
            gone = state._remove_keyed(sarkey, keep=nexus)
            state._reserve(nexus, rtype)
            if old != rtype:
                lu.add_ua(Reason.RESERVATIONS_RELEASED, state.registrations, exclude=nexus)
        else:
            gone = state._remove_keyed(sarkey, keep=nexus)
            if not gone and sarkey not in state.registrations.values():
                raise ReservationConflict
    state.generation += 1
    lu.add_ua(Reason.REGISTRATIONS_PREEMPTED, gone)
    if abort and gone and state.on_abort is not None:
        state.on_abort(gone)


def _sa_ops(
    opcode: int, name: str, handler: Handler, sas: Iterable[tuple[int, str]], tail: str
) -> tuple[OpInfo, ...]:
    return tuple(
        OpInfo(opcode, f"{name} {sa_name}", handler, usage(f"{opcode:02x} {sa:02x} {tail}"),
               Access.ALLOW, sa=sa)
        for sa, sa_name in sas
    )


OPS: tuple[OpInfo, ...] = _sa_ops(
    0x5E,
    "PERSISTENT RESERVE IN",
    prin,
    ((0, "READ KEYS"), (1, "READ RESERVATION"), (2, "REPORT CAPABILITIES"), (3, "READ FULL STATUS")),
    "00 00 00 00 00 ff ff 00",
) + _sa_ops(
    0x5F,
    "PERSISTENT RESERVE OUT",
    prout,
    (
        (0, "REGISTER"),
        (1, "RESERVE"),
        (2, "RELEASE"),
        (3, "CLEAR"),
        (4, "PREEMPT"),
        (5, "PREEMPT AND ABORT"),
        (6, "REGISTER AND IGNORE EXISTING KEY"),
    ),
    "ff 00 00 ff ff ff ff 00",
)

"""A SCSI target device: routes commands to logical units by LUN and answers for absent ones.

The transport decodes the 8-byte LUN field with :func:`decode_lun` and calls
:meth:`ScsiTarget.execute`; REPORT LUNS lists the mapped LUNs with :func:`encode_lun` (single-level
peripheral addressing below 256, flat addressing 01b above), so the two always agree.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from .lu import LogicalUnit
from .sense import Reason, build_sense, cdb_error, sense_of_error, ScsiError
from .types import Nexus, ScsiCommand, ScsiResult, Status
from .vpd import absent_lun_inquiry

MAX_LUN = 0x3FFF


def encode_lun(lun: int) -> bytes:
    """SAM-5 single-level LUN: peripheral device addressing (00b) if < 256, else flat (01b)."""
    if not 0 <= lun <= MAX_LUN:
        raise ValueError(f"LUN {lun} out of range")
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    return bytes((0x40 | (lun >> 8), lun & 0xFF)) + bytes(6)


def decode_lun(raw: bytes) -> int:
    """Inverse of :func:`encode_lun` for the first level; other address methods map to -1 (absent)."""
    method = raw[0] >> 6
    if method == 0 and raw[0] == 0:
        return raw[1]
    if method == 1:
        return ((raw[0] & 0x3F) << 8) | raw[1]
    return -1


def report_luns_data(cmd: ScsiCommand, luns: Iterable[int]) -> ScsiResult:
    cdb = cmd.cdb
    select = cdb[2]
    if select in (0x00, 0x02):
        listed = sorted(luns)
    elif select in (0x01, 0x10, 0x11):  # well-known / administrative LUs: we have none
        listed = []
    else:
        raise cdb_error(2)
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    body = b"".join(encode_lun(lun) for lun in listed)
    return ScsiResult(Status.GOOD, (struct.pack(">I4x", len(body)) + body)[:alloc])


class ScsiTarget:
    """The LUNs one iSCSI target exposes, and the target-wide reset and nexus hooks.

    ``tpgts`` are the target portal group tags (relative target port identifiers) the target is
    reachable through; REPORT TARGET PORT GROUPS lists them.
    """

    def __init__(
        self, name: str, luns: dict[int, LogicalUnit] | None = None, tpgts: Sequence[int] = (1,)
    ) -> None:
        self.name = name
        self.tpgts = tuple(tpgts)
        self.luns: dict[int, LogicalUnit] = {}
        for lun, lu in (luns or {}).items():
            self._map(lun, lu)

    def _map(self, lun: int, lu: LogicalUnit) -> None:
        if not 0 <= lun <= MAX_LUN:
            raise ValueError(f"LUN {lun} out of range")
        if lu.target is not None and lu.target is not self:
            raise ValueError(f"{lu!r} is already mapped by target {lu.target.name}")
        lu.target = self
        lu.lun = lun
        self.luns[lun] = lu

    def add_lun(self, lun: int, lu: LogicalUnit) -> None:
        """Map a LUN at run time; every nexus is told REPORTED LUNS DATA HAS CHANGED."""
        if lun in self.luns:
            raise ValueError(f"LUN {lun} already mapped")
        self._map(lun, lu)
        self._luns_changed()

    def remove_lun(self, lun: int) -> LogicalUnit:
        lu = self.luns.pop(lun)
        lu.target = None
        self._luns_changed()
        return lu

    def _luns_changed(self) -> None:
        for lu in self.luns.values():
            lu.add_ua(Reason.REPORTED_LUNS_DATA_CHANGED)

    # --- commands ---------------------------------------------------------------------------

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        lu = self.luns.get(cmd.lun)
        if lu is not None:
            return await lu.execute(cmd)
        return self._absent(cmd)

    async def report_luns(self, cmd: ScsiCommand) -> ScsiResult:
        lu = self.luns.get(cmd.lun)
        if lu is not None:
            lu.clear_ua(cmd.nexus, Reason.REPORTED_LUNS_DATA_CHANGED)
        return report_luns_data(cmd, self.luns)

    def _absent(self, cmd: ScsiCommand) -> ScsiResult:
        """Commands to a LUN nobody mapped (SPC-4 6.6.2, 6.39, SAM-5 5.9.5)."""
        cdb = cmd.cdb
        op = cdb[0]
        try:
            if op == 0xA0:
                return report_luns_data(cmd, self.luns)
            if op == 0x12 and not cdb[1] & 0x01:
                alloc = (cdb[3] << 8) | cdb[4]
                return ScsiResult(Status.GOOD, absent_lun_inquiry()[:alloc])
            if op == 0x03:
                sense = build_sense(Reason.LUN_NOT_SUPPORTED, bool(cdb[1] & 0x01))
                return ScsiResult(Status.GOOD, sense[: cdb[4]])
        except ScsiError as err:
            return ScsiResult(Status.CHECK_CONDITION, None, sense_of_error(err, False))
        return ScsiResult(Status.CHECK_CONDITION, None, build_sense(Reason.LUN_NOT_SUPPORTED))

    # --- hooks for the transport ------------------------------------------------------------

    def nexus_added(self, nexus: Nexus) -> None:
        """A session logged in: each LU queues its POWER ON/RESET unit attention for it."""
        for lu in self.luns.values():
            lu.nexus_added(nexus)

    def nexus_lost(self, nexus: Nexus) -> None:
        """A session is gone: SPC-2 reservations it held are released on every LU."""
        for lu in self.luns.values():
            lu.nexus_lost(nexus)

    def reset_lun(self, lun: int, by: Nexus | None = None) -> bool:
        """LOGICAL UNIT RESET task management function; False if the LUN does not exist."""
        lu = self.luns.get(lun)
        if lu is None:
            return False
        lu.reset(by)
        return True

    def reset_target(self, by: Nexus | None = None, cold: bool = False) -> None:
        """TARGET WARM RESET / TARGET COLD RESET task management functions."""
        for lu in self.luns.values():
            lu.target_reset(by, cold)

    reset_all = reset_target

    def find_lu(self, naa: bytes) -> LogicalUnit | None:
        """The LU whose NAA designator is ``naa`` (EXTENDED COPY target descriptors name LUs so)."""
        for lu in self.luns.values():
            if lu.naa == naa:
                return lu
        return None

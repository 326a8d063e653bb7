"""One logical unit: identity, per-nexus state, and the gate every command passes through.

The gate (after tgt's ``scsi_cmd_perform``) does, in order: deliver a pending unit attention to the
nexus (except for INQUIRY, REPORT LUNS and REQUEST SENSE, SPC-4 5.14), look the opcode up, and
check SPC-2 and persistent reservations. Handlers then parse and execute (LIO's split), raising
:class:`~storaged.scsi.sense.ScsiError`; the gate turns that into CHECK CONDITION with fixed or
descriptor sense as the Control mode page's D_SENSE bit says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING

from ..backstore.base import Backstore, BackstoreError, BackstoreFull, BackstoreUnavailable
from ..metrics.iostats import IO_KIND, LunIoStats
from . import pr, sbc, spc, xcopy
from .modes import ModePages
from .ops import Access, OpEntry, OpInfo, build_table
from .ranges import RangeTracker
from .sense import Reason, ReservationConflict, ScsiError, build_sense, cdb_error, sense_of_error
from .types import Nexus, ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from .target import ScsiTarget

log = logging.getLogger(__name__)

#: opcodes a pending unit attention does not block (SPC-4 5.14): INQUIRY, REQUEST SENSE, REPORT LUNS
UA_EXEMPT = frozenset((0x12, 0x03, 0xA0))

ALL_OPS: tuple[OpInfo, ...] = spc.OPS + sbc.OPS + pr.OPS + xcopy.OPS


@dataclass(frozen=True, slots=True)
class BlockLimits:
    """What the Block Limits VPD page promises; the handlers enforce the same numbers."""

    #: largest READ/WRITE in bytes (converted to blocks for the VPD page)
    max_transfer_bytes: int = 8 << 20
    #: optimal transfer in bytes
    opt_transfer_bytes: int = 1 << 20
    max_unmap_lba_count: int = 1 << 20
    max_unmap_descriptors: int = 256
    #: WRITE SAME longer than this (blocks) is rejected; 0 for "no limit"
    max_write_same_blocks: int = 0xFFFF
    #: COMPARE AND WRITE NUMBER OF LOGICAL BLOCKS limit (the CDB field is one byte)
    max_compare_write_blocks: int = 255
    #: WRITE ATOMIC(16) limit in bytes
    max_atomic_bytes: int = 1 << 20


class LogicalUnit:
    """A direct-access block device (SBC-3) over a :class:`Backstore`.

    ``naa`` is the 16-byte NAA IEEE Registered Extended designator (NAA type 6) that identifies the
    LU in VPD page 83h and in EXTENDED COPY; ``serial`` is the unit serial number of VPD page 80h.
    Both must stay stable across restarts because initiators (multipath) key on them.
    """

    def __init__(
        self,
        backstore: Backstore,
        *,
        naa: bytes,
        serial: str,
        product: str = "VIRTUAL-DISK",
        revision: str = "0001",
        vendor: str = "STORAGED",
        block_size: int = 512,
        physical_block_size: int | None = None,
        read_only: bool = False,
        thin: bool | None = None,
        limits: BlockLimits | None = None,
    ) -> None:
        if len(naa) != 16 or (naa[0] >> 4) != 6:
            raise ValueError("naa must be a 16-byte NAA type 6 (IEEE Registered Extended) designator")
        if block_size not in (512, 4096):
            raise ValueError("block size must be 512 or 4096")
        if backstore.size % block_size:
            raise ValueError("backstore size must be a multiple of the block size")
        if not serial or not all(0x20 <= ord(c) < 0x7F for c in serial):
            raise ValueError("serial must be non-empty printable ASCII")
        self.backstore = backstore
        self.naa = bytes(naa)
        self.serial = serial
        self.vendor = vendor
        self.product = product
        self.revision = revision
        self.block_size = block_size
        self.num_blocks = backstore.size // block_size
        # Logical blocks per physical block exponent (READ CAPACITY 16). Defaults to 0: libiscsi's
        # GetLBAStatus.UnmapSingle only holds when one logical block is one physical block.
        self.lbppbe = max(0, ((physical_block_size or block_size) // block_size).bit_length() - 1)
        self.read_only = read_only
        self.thin = backstore.thin if thin is None else (thin and backstore.thin)
        self.limits = limits or BlockLimits()
        self.max_xfer_blocks = max(1, self.limits.max_transfer_bytes // block_size)
        self.max_atomic_blocks = min(self.max_xfer_blocks, max(1, self.limits.max_atomic_bytes // block_size))
        #: set by ScsiTarget when the LU is mapped
        self.target: ScsiTarget | None = None
        self.lun: int | None = None

        self.modes = ModePages(self)
        #: hot-path copies of mode-page bits, refreshed by ModePages.apply
        self.d_sense = False
        self._swp = False  # the host's software write protect (control mode page)
        self._held = False  # the array's own (replication: an S-VOL, a fenced P-VOL)
        #: read_only or SWP or held, kept up to date by their setters (read on every write)
        self.write_protected = read_only
        self.write_through = False
        self.modes.sync_lu()

        self.pr = pr.PersistentReservations(self)
        #: SPC-2 RESERVE holder
        self.res2: Nexus | None = None
        #: writes in flight by byte range: COMPARE AND WRITE, WRITE ATOMIC and ORWRITE take their
        #: range exclusively against writes already in flight and those arriving meanwhile
        self.ranges = RangeTracker()
        #: EXTENDED COPY results retained per (nexus, list id)
        self.copy_results: dict[tuple[Nexus, int], bytes] = {}
        #: READ/WRITE counters and latency histogram (storaged/metrics reads them at scrape time)
        self.io = LunIoStats()

        self._ops: list[OpEntry] = build_table(ALL_OPS, self.thin)
        self._nexuses: set[Nexus] = set()
        self._ua: dict[Nexus, list[Reason]] = {}
        self._cache: dict[object, bytes] = {}

    # --- the gate --------------------------------------------------------------------------

    # --- write protection: three owners, one answer ---------------------------------------------

    @property
    def held(self) -> bool:
        """Write protection by the array itself (an S-VOL, a fenced P-VOL): neither a MODE SELECT
        from a host nor the config's read_only may lift it, nor it theirs."""
        return self._held

    @held.setter
    def held(self, on: bool) -> None:
        self._held = on
        self.write_protected = self.read_only or self._swp or on

    @property
    def swp(self) -> bool:
        """The control mode page's SWP bit, as the hosts set it."""
        return self._swp

    @swp.setter
    def swp(self, on: bool) -> None:
        self._swp = on
        self.write_protected = self.read_only or on or self._held

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        """Run one command to completion; never raises for SCSI-level failures."""
        cdb = cmd.cdb
        nexus = cmd.nexus
        try:
            op = cdb[0]
            if nexus not in self._nexuses:
                self.nexus_added(nexus)
            if self._ua and op not in UA_EXEMPT:
                queue = self._ua.get(nexus)
                if queue:
                    return self._ua_result(nexus, queue)
            info = self._ops[op]
            if info is None:
                raise ScsiError(Reason.INVALID_OPCODE, field=0)
            if info.__class__ is dict:
                info = info.get(cdb[1] & 0x1F)
                if info is None:
                    raise cdb_error(1, 4)
            if (self.res2 is not None or self.pr.type) and self._conflicts(
                info, nexus  # type: ignore[arg-type]
            ):
                return ScsiResult(Status.RESERVATION_CONFLICT)
            kind = IO_KIND[op]
            if not kind:
                return await info.handler(self, cmd)  # type: ignore[union-attr]
            t0 = perf_counter_ns()
            res = None
            try:
                res = await info.handler(self, cmd)  # type: ignore[union-attr]
                return res
            finally:
                self.io.done(kind, cmd, res, perf_counter_ns() - t0)
        except ScsiError as err:
            return ScsiResult(Status.CHECK_CONDITION, None, sense_of_error(err, self.d_sense))
        except ReservationConflict:
            return ScsiResult(Status.RESERVATION_CONFLICT)
        except BackstoreFull:
            return self.check_condition(Reason.SPACE_ALLOC_FAILED)
        except BackstoreUnavailable:
            return self.check_condition(Reason.NOT_READY_COMM_FAILURE)
        except BackstoreError as exc:
            log.error("LUN %s: backstore error on opcode %02xh: %s", self.lun, cdb[0], exc)
            return self.check_condition(Reason.MEDIUM_ERROR)
        except IndexError:
            # A CDB shorter than its opcode implies: the transport pads CDBs, so this is a bug
            # on the initiator side; answer rather than crash the session.
            return self.check_condition(Reason.INVALID_FIELD_IN_CDB)

    def check_condition(self, reason: Reason, info: int | None = None) -> ScsiResult:
        return ScsiResult(Status.CHECK_CONDITION, None, build_sense(reason, self.d_sense, info))

    def _conflicts(self, info: OpInfo, nexus: Nexus) -> bool:
        holder = self.res2
        if holder is not None and holder != nexus and not info.res2_allowed:
            return True
        if self.pr.type and info.access is not Access.ALLOW:
            return self.pr.conflicts(nexus, info.access)
        return False

    def access_conflict(self, nexus: Nexus, access: Access) -> bool:
        """Would a command of class ``access`` from ``nexus`` hit a reservation? (EXTENDED COPY
        checks the other LUs it touches this way.)"""
        holder = self.res2
        if holder is not None and holder != nexus:
            return True
        return bool(self.pr.type) and access is not Access.ALLOW and self.pr.conflicts(nexus, access)

    async def store(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        """Write through the backstore with the range held (shared) for the whole write, so a
        COMPARE AND WRITE waits for it; waits itself only for an overlapping one in flight."""
        ranges = self.ranges
        hold = ranges.shared(offset, offset + len(data))
        try:
            if hold.blockers:
                await ranges.wait(hold)
                self.check_writable()
            await self.backstore.write(offset, data, fua)
        finally:
            ranges.release(hold)

    def check_writable(self) -> None:
        """After waiting for an overlapping command: the LU may have become write-protected meanwhile
        (an S-VOL, a fenced P-VOL), and the array waited only for the writes that held their range
        before; this one had passed its check earlier and must not land now."""
        if self.write_protected:
            raise ScsiError(Reason.WRITE_PROTECTED)

    async def zero(self, offset: int, length: int, unmap: bool) -> None:
        """Deallocate (``unmap``) or zero a range, held like a write."""
        async with self.ranges.writing(offset, offset + length):
            self.check_writable()
            if unmap:
                await self.backstore.unmap(offset, length)
            else:
                await self.backstore.write_zeroes(offset, length)

    async def compare_and_write(self, offset: int, expected: bytes | bytearray | memoryview,
                                data: bytes | bytearray | memoryview, fua: bool) -> int:
        """The backstore's compare-and-write with the range held exclusively: it sees the range
        before or after each overlapping write, never in between (-1, or first differing offset)."""
        async with self.ranges.locked(offset, offset + len(expected)):
            self.check_writable()
            return await self.backstore.compare_and_write(offset, expected, data, fua)

    # --- unit attentions -------------------------------------------------------------------

    def _ua_result(self, nexus: Nexus, queue: list[Reason]) -> ScsiResult:
        reason = queue.pop(0)
        if not queue:
            del self._ua[nexus]
        return ScsiResult(Status.CHECK_CONDITION, None, build_sense(reason, self.d_sense))

    def pop_ua(self, nexus: Nexus) -> Reason | None:
        """Take the oldest pending unit attention for ``nexus`` (REQUEST SENSE reports it)."""
        queue = self._ua.get(nexus)
        if not queue:
            return None
        reason = queue.pop(0)
        if not queue:
            del self._ua[nexus]
        return reason

    def clear_ua(self, nexus: Nexus, reason: Reason) -> None:
        queue = self._ua.get(nexus)
        if queue and reason in queue:
            queue.remove(reason)
            if not queue:
                del self._ua[nexus]

    def add_ua(self, reason: Reason, nexuses: object = None, exclude: Nexus | None = None) -> None:
        """Queue ``reason`` for each nexus in ``nexuses`` (default: every nexus that has logged in)."""
        targets = self._nexuses if nexuses is None else nexuses
        for nexus in list(targets):  # type: ignore[call-overload]
            if nexus == exclude:
                continue
            queue = self._ua.setdefault(nexus, [])
            if reason not in queue:
                queue.append(reason)

    def pending_ua(self, nexus: Nexus) -> list[Reason]:
        """The unit attentions queued for ``nexus``, oldest first (for tests and diagnostics)."""
        return list(self._ua.get(nexus, ()))

    def capacity_changed(self) -> None:
        """The backstore grew (config reload): take its new size and tell every nexus
        CAPACITY DATA HAS CHANGED (SBC-3 4.9), so hosts re-read the capacity."""
        self.num_blocks = self.backstore.size // self.block_size
        self.invalidate_cache()
        self.add_ua(Reason.CAPACITY_CHANGED)

    # --- hooks for the transport -----------------------------------------------------------

    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus (session login). Like tgt, it starts with a POWER ON/RESET unit attention.

        Calling this is optional: the first command from an unknown nexus does the same.
        """
        if nexus in self._nexuses:
            return
        self._nexuses.add(nexus)
        self.add_ua(Reason.POWER_ON_RESET, (nexus,))

    def nexus_lost(self, nexus: Nexus) -> None:
        """The session is gone (logout, connection loss): an SPC-2 RESERVE it held is released.

        Persistent reservations survive (they belong to the I_T nexus, which returns on re-login).
        """
        self._nexuses.discard(nexus)
        self._ua.pop(nexus, None)
        if self.res2 == nexus:
            self.res2 = None
        for key in [k for k in self.copy_results if k[0] == nexus]:
            del self.copy_results[key]

    def reset(self, by: Nexus | None = None) -> None:
        """LOGICAL UNIT RESET (SAM-5 6.3.3): drop SPC-2 reservations, unit attention to everyone.

        Every nexus, the issuer included, sees BUS DEVICE RESET FUNCTION OCCURRED (libiscsi's
        multipath reset test counts on it). Aborting in-flight tasks is the transport's job.
        """
        self.res2 = None
        self.add_ua(Reason.BUS_DEVICE_RESET)

    def target_reset(self, by: Nexus | None = None, cold: bool = False) -> None:
        """TARGET WARM/COLD RESET. A cold reset is a power cycle: non-APTPL persistent reservations
        and mode page changes are lost, as on power-on."""
        self.res2 = None
        if cold:
            self.pr.clear_all()
            self.modes.reset_defaults()
            self.copy_results.clear()
            self.add_ua(Reason.POWER_ON)
        else:
            self.add_ua(Reason.BUS_DEVICE_RESET)

    # --- helpers for handlers --------------------------------------------------------------

    def cached(self, key: object, build: object) -> bytes:
        """Memoise constant response data (VPD pages, standard INQUIRY)."""
        data = self._cache.get(key)
        if data is None:
            data = build()  # type: ignore[operator]
            self._cache[key] = data
        return data

    def invalidate_cache(self) -> None:
        self._cache.clear()

    @property
    def ops(self) -> list[OpEntry]:
        return self._ops

    def __repr__(self) -> str:
        size = f"{self.num_blocks}x{self.block_size}"
        return f"<LogicalUnit lun={self.lun} serial={self.serial!r} blocks={size}>"

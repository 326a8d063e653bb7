"""Mode pages: what MODE SENSE reports and which bits MODE SELECT may change.

Each page is kept as current bytes plus a changeable mask and defaults. MODE SELECT accepts a page
only if it differs from the current one in changeable bits alone, which is how SPC-4 6.11 wants a
device server with a few tunables (WCE, D_SENSE, SWP) to behave. Nothing is savable.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .sense import Reason, ScsiError, cdb_error, param_error

if TYPE_CHECKING:
    from .lu import LogicalUnit

PAGE_RW_RECOVERY = 0x01
PAGE_CACHING = 0x08
PAGE_CONTROL = 0x0A
PAGE_IEC = 0x1C
PAGE_ALL = 0x3F

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3


def _defaults() -> dict[int, bytearray]:
    rw = bytearray(12)
    rw[0:2] = (PAGE_RW_RECOVERY, 10)
    rw[2] = 0x80  # AWRE: writes reallocate automatically (nothing to do for a file)

    caching = bytearray(20)
    caching[0:2] = (PAGE_CACHING, 18)
    caching[2] = 0x04  # WCE: writes land in the page cache; SYNCHRONIZE CACHE / FUA make them durable

    control = bytearray(12)
    control[0:2] = (PAGE_CONTROL, 10)
    control[3] = 0x10  # QUEUE ALGORITHM MODIFIER = 1: unrestricted reordering
    struct.pack_into(">H", control, 8, 0xFFFF)  # BUSY TIMEOUT PERIOD: unlimited

    iec = bytearray(12)
    iec[0:2] = (PAGE_IEC, 10)
    iec[2] = 0x08  # DEXCPT: no informational exceptions to report

    return {PAGE_RW_RECOVERY: rw, PAGE_CACHING: caching, PAGE_CONTROL: control, PAGE_IEC: iec}


def _changeable() -> dict[int, bytes]:
    masks = {code: bytearray(len(page)) for code, page in _defaults().items()}
    for code, page in masks.items():
        page[0:2] = (code, len(page) - 2)
    masks[PAGE_CACHING][2] = 0x04  # WCE
    masks[PAGE_CONTROL][2] = 0x04  # D_SENSE
    masks[PAGE_CONTROL][4] = 0x08  # SWP
    return {code: bytes(page) for code, page in masks.items()}


CHANGEABLE = _changeable()


class ModePages:
    """Per-LU mode page state."""

    def __init__(self, lu: LogicalUnit) -> None:
        self.lu = lu
        self.current = _defaults()

    def reset_defaults(self) -> None:
        self.current = _defaults()
        self.sync_lu()

    def sync_lu(self) -> None:
        """Copy the bits the hot path needs onto the LU."""
        lu = self.lu
        lu.d_sense = bool(self.current[PAGE_CONTROL][2] & 0x04)
        lu.swp = bool(self.current[PAGE_CONTROL][4] & 0x08)  # (with read_only and the array's hold)
        lu.write_through = not (self.current[PAGE_CACHING][2] & 0x04)

    def page(self, code: int, pc: int) -> bytes:
        if pc == PC_CHANGEABLE:
            return CHANGEABLE[code]
        if pc == PC_DEFAULT:
            return bytes(_defaults()[code])
        return bytes(self.current[code])

    def pages(self, code: int, subpage: int, pc: int) -> bytes:
        """Page data for MODE SENSE (without header or block descriptors)."""
        if pc == PC_SAVED:
            raise ScsiError(Reason.SAVING_PARAMS_NOT_SUPPORTED, field=2, bit=7)
        if subpage not in (0x00, 0xFF):
            raise cdb_error(3)
        if code == PAGE_ALL:
            return b"".join(self.page(c, pc) for c in sorted(self.current))
        if code not in self.current:
            raise cdb_error(2, 5)
        return self.page(code, pc)

    def device_specific(self) -> int:
        """Device-specific parameter byte: WP (write protected) and DPOFUA (DPO/FUA supported)."""
        return (0x80 if self.lu.write_protected else 0) | 0x10

    def select(self, data: bytes, offset: int) -> bool:
        """Apply the mode pages in ``data[offset:]``; returns True if anything changed.

        Pages are validated all-or-nothing before any is applied.
        """
        staged: list[tuple[int, bytes]] = []
        pos = offset
        while pos < len(data):
            if pos + 2 > len(data):
                raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
            code = data[pos] & 0x3F
            if data[pos] & 0x40:  # SPF: we have no subpages
                raise param_error(pos, 6)
            length = data[pos + 1] + 2
            if code not in self.current:
                raise param_error(pos, 5)
            cur = self.current[code]
            if length != len(cur):
                raise param_error(pos + 1)
            if pos + length > len(data):
                raise ScsiError(Reason.PARAM_LIST_LENGTH_ERROR)
            new = data[pos : pos + length]
            mask = CHANGEABLE[code]
            for i in range(2, length):
                if (new[i] ^ cur[i]) & ~mask[i] & 0xFF:
                    raise param_error(pos + i)
            staged.append((code, bytes(new)))
            pos += length
        changed = False
        for code, new in staged:
            cur = self.current[code]
            if cur[2:] != new[2:]:
                cur[2:] = new[2:]
                changed = True
        if changed:
            self.sync_lu()
        return changed

"""Block commands (SBC-3): the opcode table of reads, writes, verify, caches, provisioning, capacity.

The handlers live by concern in :mod:`.sbc_rw` (READ/WRITE, WRITE ATOMIC, VERIFY, COMPARE AND
WRITE, ORWRITE), :mod:`.sbc_provisioning` (WRITE SAME, UNMAP, GET LBA STATUS) and
:mod:`.sbc_medium` (capacity, caches, defects, power). This module builds :data:`OPS` from them and
re-exports every handler, so ``sbc.read10`` and friends keep working.
"""

from __future__ import annotations

from .ops import Access, OpInfo, usage
from .sbc_common import GOOD, LBA_OOB
from .sbc_medium import (prefetch10, prefetch16, prevent_allow, read_capacity10, read_capacity16,
                         read_defect_data10, read_defect_data12, start_stop_unit, sync_cache10, sync_cache16)
from .sbc_provisioning import get_lba_status, unmap, write_same10, write_same16
from .sbc_rw import (compare_and_write, orwrite16, read6, read10, read12, read16, verify10, verify12,
                     verify16, write6, write10, write12, write16, write_atomic16, write_verify10,
                     write_verify12, write_verify16)

A = Access.ALLOW
R = Access.READ
W = Access.WRITE

OPS: tuple[OpInfo, ...] = (
    OpInfo(0x08, "READ(6)", read6, usage("08 1f ff ff ff 00"), R),
    OpInfo(0x0A, "WRITE(6)", write6, usage("0a 1f ff ff ff 00"), W),
    OpInfo(0x1B, "START STOP UNIT", start_stop_unit, usage("1b 01 00 0f f7 00"), A),
    OpInfo(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", prevent_allow, usage("1e 00 00 00 03 00"), A),
    OpInfo(0x25, "READ CAPACITY(10)", read_capacity10, usage("25 00 ff ff ff ff 00 00 01 00"), A),
    OpInfo(0x28, "READ(10)", read10, usage("28 18 ff ff ff ff 00 ff ff 00"), R),
    OpInfo(0x2A, "WRITE(10)", write10, usage("2a 18 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x2E, "WRITE AND VERIFY(10)", write_verify10, usage("2e 12 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x2F, "VERIFY(10)", verify10, usage("2f 16 ff ff ff ff 00 ff ff 00"), R),
    OpInfo(0x34, "PRE-FETCH(10)", prefetch10, usage("34 02 ff ff ff ff 00 ff ff 00"), R),
    OpInfo(0x35, "SYNCHRONIZE CACHE(10)", sync_cache10, usage("35 02 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x37, "READ DEFECT DATA(10)", read_defect_data10, usage("37 00 1f 00 00 00 00 ff ff 00"), R),
    OpInfo(0x41, "WRITE SAME(10)", write_same10, usage("41 08 ff ff ff ff 00 ff ff 00"), W),
    OpInfo(0x42, "UNMAP", unmap, usage("42 00 00 00 00 00 00 ff ff 00"), W, thin_only=True),
    OpInfo(0x88, "READ(16)", read16, usage("88 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0x89, "COMPARE AND WRITE", compare_and_write,
           usage("89 18 ff ff ff ff ff ff ff ff 00 00 00 ff 00 00"), W),
    OpInfo(0x8A, "WRITE(16)", write16, usage("8a 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x8B, "ORWRITE(16)", orwrite16, usage("8b 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x8E, "WRITE AND VERIFY(16)", write_verify16,
           usage("8e 12 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x8F, "VERIFY(16)", verify16, usage("8f 16 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0x90, "PRE-FETCH(16)", prefetch16, usage("90 02 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0x91, "SYNCHRONIZE CACHE(16)", sync_cache16,
           usage("91 02 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x93, "WRITE SAME(16)", write_same16, usage("93 09 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x9C, "WRITE ATOMIC(16)", write_atomic16,
           usage("9c 18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0x9E, "READ CAPACITY(16)", read_capacity16,
           usage("9e 10 00 00 00 00 00 00 00 00 ff ff ff ff 00 00"), A, sa=0x10),
    OpInfo(0x9E, "GET LBA STATUS", get_lba_status,
           usage("9e 12 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"), R, sa=0x12),
    OpInfo(0xA8, "READ(12)", read12, usage("a8 18 ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0xAA, "WRITE(12)", write12, usage("aa 18 ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0xAE, "WRITE AND VERIFY(12)", write_verify12, usage("ae 12 ff ff ff ff ff ff ff ff 00 00"), W),
    OpInfo(0xAF, "VERIFY(12)", verify12, usage("af 16 ff ff ff ff ff ff ff ff 00 00"), R),
    OpInfo(0xB7, "READ DEFECT DATA(12)", read_defect_data12, usage("b7 1f 00 00 00 00 ff ff ff ff 00 00"), R),
)

__all__ = ["GOOD", "LBA_OOB", "OPS", "A", "R", "W",
           "read6", "read10", "read12", "read16", "write6", "write10", "write12", "write16", "write_atomic16",
           "write_verify10", "write_verify12", "write_verify16", "verify10", "verify12", "verify16",
           "compare_and_write", "orwrite16",
           "write_same10", "write_same16", "unmap", "get_lba_status",
           "read_capacity10", "read_capacity16", "sync_cache10", "sync_cache16", "prefetch10", "prefetch16",
           "read_defect_data10", "read_defect_data12", "start_stop_unit", "prevent_allow"]

"""Stable identities for an array and its LUNs: a UUID made once and kept in the data directory,
and per-LUN NAA designators and serial numbers derived from it.

Hosts key multipath and udev names on the NAA id (VPD page 83h), so it must survive restarts and
differ between arrays even when two configs name their LUNs alike.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

from .persist import atomic_write_json, read_json

#: IEEE company id field of our NAA type 6 designators (an arbitrary, fixed value: "STO")
COMPANY_ID = 0x53544F


@dataclass(frozen=True, slots=True)
class LunIdentity:
    naa: bytes  # 16 bytes, NAA type 6 (IEEE Registered Extended)
    serial: str


def array_uuid(data_dir: str) -> str:
    """Return the array's UUID, creating and persisting it on first start."""
    path = os.path.join(data_dir, "array-id.json")
    if os.path.exists(path):
        return str(read_json(path)["uuid"])
    value = str(uuid.uuid4())
    atomic_write_json(path, {"uuid": value})
    return value


def lun_identity(array_id: str, target: str, lun: int, serial: str | None = None) -> LunIdentity:
    digest = hashlib.sha256(f"{array_id}/{target}/{lun}".encode()).digest()
    vendor_bits = int.from_bytes(digest[:13], "big") >> 4  # 100 bits
    value = (0x6 << 124) | (COMPANY_ID << 100) | vendor_bits
    return LunIdentity(naa=value.to_bytes(16, "big"), serial=serial or digest[:10].hex())

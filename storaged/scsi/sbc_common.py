"""What the SBC handler modules share: CDB field unpackers and the out-of-range error.

The underscored names are private to the ``sbc*`` modules of this package.
"""

from __future__ import annotations

import struct

from .sense import Reason, ScsiError
from .types import Status

GOOD = Status.GOOD
_u10 = struct.Struct(">xxIxH").unpack_from  # LBA, TRANSFER LENGTH
_u12 = struct.Struct(">xxII").unpack_from
_u16 = struct.Struct(">xxQI").unpack_from

LBA_OOB = Reason.LBA_OUT_OF_RANGE


def _oob() -> ScsiError:
    return ScsiError(LBA_OOB)

"""Who is behind the I/O being served right now: the request's origin.

A command device answers each initiator with its own slots, and only allowed initiators may issue
commands, but the backing-store interface carries bytes, not identities. The origin travels
beside the call instead, in a context variable set where a request enters the array: the iSCSI
transport sets the initiator name; the remote link sets ``PEER/ORIGIN`` (the peer array's name and
the initiator that peer served), so array B knows a command came from host H through array A.
Each command runs in its own asyncio task, so concurrent requests never see each other's origin.
"""

from __future__ import annotations

from contextvars import ContextVar

ORIGIN: ContextVar[str] = ContextVar("storaged_origin", default="")


def current_origin() -> str:
    return ORIGIN.get()


def via_peer(peer: str, origin: str) -> str:
    """The origin of a request that array ``peer`` forwarded for ``origin``."""
    return f"{peer}/{origin}" if origin else peer

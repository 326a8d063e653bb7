"""asyncio side of the remote link: the server that serves our volumes to a peer, and the
client (:class:`PeerLink`) that reaches a peer's volumes.

This module only gathers the names the rest of the daemon imports; the work is split by concern:

* :mod:`.connection`: one TCP connection as a stream of frames (receive in place, backpressure,
  handshake step, sealing every frame after it), common to both ends;
* :mod:`.server`: :class:`LinkServer`, accepting peers and bounding what unauthenticated ones cost;
* :mod:`.dispatch`: what each request a peer sends does (volume I/O, control calls);
* :mod:`.client`: :class:`PeerLink`, keeping a connection to a peer up and sending requests.

Frames are decoded by the sans-IO :class:`~storaged.remote.reader.FrameReader` and sealed with
:mod:`~storaged.remote.integrity`; every module logs to the ``storaged.remote.link`` logger.
"""

from __future__ import annotations

from .client import Listener, PeerLink, _ClientConnection
from .connection import FrameConnection, RateLimitedWarning
from .connection import FrameConnection as _FrameConnection
from .dispatch import dispatch, resolve_volume
from .server import LinkServer, _ServerConnection

__all__ = [
    "FrameConnection",
    "LinkServer",
    "Listener",
    "PeerLink",
    "RateLimitedWarning",
    "_ClientConnection",
    "_FrameConnection",
    "_ServerConnection",
    "dispatch",
    "resolve_volume",
]

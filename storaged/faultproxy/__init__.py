"""A fault-injecting TCP proxy for the remote link: delay, jitter, bandwidth, loss-like latency,
stalls, cuts, refusals and mid-stream drops, changeable while traffic flows.

Put it between two arrays (array A's ``remote.peers[].address`` -> proxy -> array B's
``remote.listen``) to rehearse link trouble; see docs/faultproxy.md. The fault logic is the
sans-IO :class:`Scheduler`; :class:`FaultProxy` is a thin asyncio pump around it.
"""

from .faults import BURST_SECONDS, Direction, DirectionOrBoth, Faults, LinkFaults
from .proxy import FaultProxy, ProxyStats
from .scheduler import Scheduler

__all__ = ["BURST_SECONDS", "Direction", "DirectionOrBoth", "FaultProxy", "Faults", "LinkFaults",
           "ProxyStats", "Scheduler"]

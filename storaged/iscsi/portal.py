"""What the login machine may ask the daemon: which targets exist, who may see them, secrets.

A plain data object, so the sans-IO login and session machines can be tested with a hand-made
portal and no daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .chap import ChapCredentials


@dataclass(frozen=True, slots=True)
class TargetInfo:
    name: str
    alias: str = ""
    #: initiator names allowed to log in and to see the target in SendTargets; None = everyone
    allowed_initiators: frozenset[str] | None = None
    chap: ChapCredentials | None = None
    portal_group_tag: int = 1
    #: LUN numbers the target serves (for task management on absent LUNs); None = not checked
    luns: frozenset[int] | None = None

    def allows(self, initiator: str) -> bool:
        return self.allowed_initiators is None or initiator in self.allowed_initiators


@dataclass(slots=True)
class Portal:
    """The targets behind one listening address and how discovery is protected."""

    targets: dict[str, TargetInfo] = field(default_factory=dict)
    #: "host:port" strings announced in SendTargets as TargetAddress=<addr>,<tpgt>
    addresses: list[str] = field(default_factory=list)
    discovery_chap: ChapCredentials | None = None
    #: target preferences for operational keys, wire strings
    operational: dict[str, str] = field(default_factory=dict)
    #: CHAP algorithms the target allows (CHAP_A numbers)
    chap_algorithms: tuple[int, ...] = (7, 8, 6, 5)
    #: TSIHs of live sessions, for logins that name one (adding a connection)
    live_tsihs: set[int] = field(default_factory=set)
    #: refused logins by reason (LoginStatus name, lower case), for storaged_login_failures_total
    login_failures: dict[str, int] = field(default_factory=dict)

    def visible_targets(self, initiator: str) -> list[TargetInfo]:
        return [t for t in self.targets.values() if t.allows(initiator)]

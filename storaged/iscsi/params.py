"""Operational parameter negotiation (RFC 7143 sections 6.2 and 13) as data.

Each key has a rule (how the result follows from the offer and our value), a default, limits and
the target's own preference. The login machine feeds offered values in and gets the reply value
and the negotiated result out; nothing else needs to know the rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Rule(enum.Enum):
    MIN = "min"  # numerical, result = min(offer, ours)
    MAX = "max"  # numerical, result = max(offer, ours)
    OR = "or"  # boolean, Yes if either says Yes
    AND = "and"  # boolean, Yes only if both say Yes
    LIST = "list"  # pick the first offered value we support
    DECLARE = "declare"  # declarative: each side states its own value


class NegotiationError(Exception):
    """The initiator offered something outside the key's domain (login status 02/00)."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    rule: Rule
    default: str
    lo: int = 0
    hi: int = 0
    #: values we accept for LIST keys, in our order of preference is not used: the offer's order wins
    choices: tuple[str, ...] = ()
    #: irrelevant in discovery sessions (RFC 7143 s.13: only some keys apply there)
    normal_only: bool = False


_KEYS = [
    KeySpec("HeaderDigest", Rule.LIST, "None", choices=("CRC32C", "None")),
    KeySpec("DataDigest", Rule.LIST, "None", choices=("CRC32C", "None")),
    KeySpec("MaxConnections", Rule.MIN, "1", 1, 65535, normal_only=True),
    KeySpec("InitialR2T", Rule.OR, "Yes", normal_only=True),
    KeySpec("ImmediateData", Rule.AND, "Yes", normal_only=True),
    KeySpec("MaxRecvDataSegmentLength", Rule.DECLARE, "8192", 512, (1 << 24) - 1),
    KeySpec("MaxBurstLength", Rule.MIN, "262144", 512, (1 << 24) - 1, normal_only=True),
    KeySpec("FirstBurstLength", Rule.MIN, "65536", 512, (1 << 24) - 1, normal_only=True),
    KeySpec("DefaultTime2Wait", Rule.MAX, "2", 0, 3600),
    KeySpec("DefaultTime2Retain", Rule.MIN, "20", 0, 3600),
    KeySpec("MaxOutstandingR2T", Rule.MIN, "1", 1, 65535, normal_only=True),
    KeySpec("DataPDUInOrder", Rule.OR, "Yes", normal_only=True),
    KeySpec("DataSequenceInOrder", Rule.OR, "Yes", normal_only=True),
    KeySpec("ErrorRecoveryLevel", Rule.MIN, "0", 0, 2),
    KeySpec("IFMarker", Rule.AND, "No"),
    KeySpec("OFMarker", Rule.AND, "No"),
    KeySpec("iSCSIProtocolLevel", Rule.MIN, "1", 0, 31),
    KeySpec("TaskReporting", Rule.LIST, "RFC3720", choices=("RFC3720",)),
]
KEYS: dict[str, KeySpec] = {k.name: k for k in _KEYS}

#: Keys that are only meaningful in the security stage or as login identity, not negotiated here.
IDENTITY_KEYS = frozenset(
    {"InitiatorName", "InitiatorAlias", "TargetName", "SessionType", "TargetAlias", "TargetAddress",
     "TargetPortalGroupTag", "AuthMethod"}
)
#: Marker interval keys: markers are not supported, so the answer is Irrelevant.
MARKER_INTERVAL_KEYS = frozenset({"IFMarkInt", "OFMarkInt"})


@dataclass(slots=True)
class SessionParams:
    """The negotiated result; defaults are RFC 7143's until a key is negotiated."""

    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    #: what the initiator can receive: our Data-In/text segments must fit
    initiator_mrdsl: int = 8192
    #: what we declared we can receive
    target_mrdsl: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0


def _parse_number(spec: KeySpec, value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise NegotiationError(f"{spec.name}={value!r} is not a number") from None
    if not spec.lo <= n <= spec.hi:
        raise NegotiationError(f"{spec.name}={n} outside {spec.lo}..{spec.hi}")
    return n


def _parse_bool(spec: KeySpec, value: str) -> bool:
    if value not in ("Yes", "No"):
        raise NegotiationError(f"{spec.name}={value!r} is neither Yes nor No")
    return value == "Yes"


class Negotiator:
    """Answers operational keys for one connection and accumulates the result.

    ``ours`` holds the target's preferences (strings as on the wire); keys absent from it use the
    RFC default as our preference.
    """

    def __init__(self, ours: dict[str, str], discovery: bool = False) -> None:
        self.ours = ours
        self.discovery = discovery
        self.result = SessionParams(target_mrdsl=int(ours.get("MaxRecvDataSegmentLength", "8192")))
        self.answered: set[str] = set()

    def respond(self, key: str, value: str) -> str | None:
        """Return the reply value for an offered key (None: no reply needed)."""
        spec = KEYS.get(key)
        if key in MARKER_INTERVAL_KEYS:
            return "Irrelevant"
        if spec is None:
            return "NotUnderstood"
        if self.discovery and spec.normal_only:
            return "Irrelevant"
        if key in self.answered and spec.rule is not Rule.DECLARE:
            raise NegotiationError(f"{key} offered twice")
        self.answered.add(key)
        mine = self.ours.get(key, spec.default)
        reply: str
        if spec.rule is Rule.DECLARE:
            n = _parse_number(spec, value)
            self._store(key, n)
            return None  # the target states its own value separately
        if spec.rule in (Rule.MIN, Rule.MAX):
            n = _parse_number(spec, value)
            m = int(mine)
            res = min(n, m) if spec.rule is Rule.MIN else max(n, m)
            self._store(key, res)
            reply = str(res)
        elif spec.rule in (Rule.OR, Rule.AND):
            b = _parse_bool(spec, value)
            m = mine == "Yes"
            res_b = (b or m) if spec.rule is Rule.OR else (b and m)
            self._store(key, res_b)
            reply = "Yes" if res_b else "No"
        else:  # LIST
            offered = [v.strip() for v in value.split(",")]
            allowed = [c for c in spec.choices if c in self.ours.get(key, ",".join(spec.choices)).split(",")]
            pick = next((v for v in offered if v in allowed), None)
            if pick is None:
                return "Reject"
            self._store(key, pick)
            reply = pick
        return reply

    def _store(self, key: str, value: int | bool | str) -> None:
        r = self.result
        if key == "HeaderDigest":
            r.header_digest = value == "CRC32C"
        elif key == "DataDigest":
            r.data_digest = value == "CRC32C"
        elif key == "MaxConnections":
            r.max_connections = int(value)
        elif key == "InitialR2T":
            r.initial_r2t = bool(value)
        elif key == "ImmediateData":
            r.immediate_data = bool(value)
        elif key == "MaxRecvDataSegmentLength":
            r.initiator_mrdsl = int(value)
        elif key == "MaxBurstLength":
            r.max_burst_length = int(value)
        elif key == "FirstBurstLength":
            r.first_burst_length = int(value)
        elif key == "DefaultTime2Wait":
            r.default_time2wait = int(value)
        elif key == "DefaultTime2Retain":
            r.default_time2retain = int(value)
        elif key == "MaxOutstandingR2T":
            r.max_outstanding_r2t = int(value)
        elif key == "DataPDUInOrder":
            r.data_pdu_in_order = bool(value)
        elif key == "DataSequenceInOrder":
            r.data_sequence_in_order = bool(value)
        elif key == "ErrorRecoveryLevel":
            r.error_recovery_level = int(value)

    def finish(self) -> SessionParams:
        """Apply cross-key rules once the initiator is done offering."""
        r = self.result
        # FirstBurstLength may not exceed MaxBurstLength (RFC 7143 s.13.14).
        r.first_burst_length = min(r.first_burst_length, r.max_burst_length)
        return r

    def unsolicited_declarations(self) -> list[tuple[str, str]]:
        """Keys the target states without being asked: its MaxRecvDataSegmentLength."""
        if "MaxRecvDataSegmentLength" in self.answered or "MaxRecvDataSegmentLength" in self.ours:
            return [("MaxRecvDataSegmentLength", str(self.result.target_mrdsl))]
        return []

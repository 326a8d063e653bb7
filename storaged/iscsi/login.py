"""The login phase of one connection (RFC 7143 s.6): security, then operational negotiation.

Sans-IO: :meth:`LoginMachine.handle` takes a Login Request PDU and returns the Login Response to
send. When the response moves the connection to full feature phase, :attr:`result` holds the
negotiated session; when it carries a failure status the connection must close after sending it.
"""

from __future__ import annotations

import enum
import logging
import secrets
from dataclasses import dataclass

from ..logfmt import note as note_log_fields
from .chap import ChapCredentials, ChapError, ChapTarget
from .params import IDENTITY_KEYS, NegotiationError, Negotiator, SessionParams
from .pdu import PDU, Opcode, format_text, parse_text
from .portal import Portal, TargetInfo

log = logging.getLogger(__name__)

SECURITY, OPERATIONAL, FULL_FEATURE = 0, 1, 3
_CHAP_KEYS = ("CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R")


class LoginStatus(enum.IntEnum):
    """Status-Class << 8 | Status-Detail (RFC 7143 s.11.13.5)."""

    SUCCESS = 0x0000
    INITIATOR_ERROR = 0x0200
    AUTH_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300


class LoginFailed(Exception):
    def __init__(self, status: LoginStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class LoginResult:
    """What the full feature phase needs to know about the session just formed."""

    initiator: str
    isid: bytes
    tsih: int
    discovery: bool
    target: TargetInfo | None
    params: SessionParams
    exp_cmdsn: int
    statsn: int
    initiator_alias: str = ""


def _valid_name(name: str) -> bool:
    """An iSCSI name: at most 223 bytes of UTF-8 without spaces or control characters (RFC 7143
    s.4.2.7.1); anything else would end up verbatim in logs, ACL checks and SendTargets."""
    return (0 < len(name.encode("utf-8", "surrogateescape")) <= 223
            and all(c.isprintable() and not c.isspace() for c in name))


class LoginMachine:
    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.stage = SECURITY
        self.initiator = ""
        self.initiator_alias = ""
        self.isid = b""
        self.discovery = False
        self.target: TargetInfo | None = None
        self.negotiator: Negotiator | None = None
        self.chap: ChapTarget | None = None
        self.auth_method: str | None = None
        self.authenticated = False
        self.statsn: int | None = None
        self.exp_cmdsn = 0
        self.itt: int | None = None
        self.pending_text = bytearray()
        self.first = True
        self.sent_tpgt = False
        self.result: LoginResult | None = None
        self.failed = False

    # ---------------------------------------------------------------------------------------

    def handle(self, req: PDU) -> PDU:
        """Process one Login Request; return the Login Response."""
        try:
            if req.opcode != Opcode.LOGIN_REQUEST:
                raise LoginFailed(LoginStatus.INVALID_DURING_LOGIN, f"opcode {req.opcode:#x} during login")
            return self._handle(req)
        except LoginFailed as exc:
            self.failed = True
            self._count_failure(exc.status)
            log.warning("login from %r refused (%04x): %s", self.initiator or "?", exc.status, exc)
            return self._response(req, [], transit=False, nsg=0, status=exc.status)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the initiator without an answer
            self.failed = True
            self._count_failure(LoginStatus.TARGET_ERROR)
            log.error("login from %r failed inside the target: %s: %s", self.initiator or "?",
                      type(exc).__name__, exc)
            return self._response(req, [], transit=False, nsg=0, status=LoginStatus.TARGET_ERROR)

    def _count_failure(self, status: LoginStatus) -> None:
        reason = status.name.lower()
        failures = self.portal.login_failures
        failures[reason] = failures.get(reason, 0) + 1

    def _handle(self, req: PDU) -> PDU:
        transit = bool(req.flags & 0x80)
        cont = bool(req.flags & 0x40)
        csg = (req.flags >> 2) & 3
        nsg = req.flags & 3
        if self.first:
            self._first_pdu(req)
        elif req.itt != self.itt:
            # A new ITT starts a new login task; only allowed once the previous one ended.
            self.itt = req.itt
        if transit and cont:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "T and C bits both set")
        self.pending_text += req.data
        if len(self.pending_text) > 65536:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "login text too long")
        if cont:
            return self._response(req, [], transit=False, nsg=0, status=LoginStatus.SUCCESS)
        try:
            pairs = parse_text(self.pending_text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, str(exc)) from None
        self.pending_text.clear()
        if self.first:
            self._identify(pairs)
            self.first = False
        if csg != self.stage:
            if csg == OPERATIONAL and self.stage == SECURITY and self._chap_creds() is None:
                self.stage = OPERATIONAL
                self.authenticated = True
            elif csg == OPERATIONAL and self.stage == SECURITY:
                raise LoginFailed(LoginStatus.AUTH_FAILURE, "authentication required")
            else:
                raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"CSG {csg} while in stage {self.stage}")
        if csg == 2 or (transit and (nsg == 2 or nsg <= csg)):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"bad stage transition {csg}->{nsg}")
        reply = self._negotiate(pairs)
        if self.stage == SECURITY:
            reply += self._security(dict(pairs))
        elif any(k == "AuthMethod" or k in _CHAP_KEYS for k, _ in pairs):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "security keys in the operational stage")
        will_transit = False
        if transit:
            if self.stage == SECURITY and not self.authenticated:
                will_transit = False  # still exchanging CHAP
            else:
                will_transit = True
        if will_transit and nsg == FULL_FEATURE:
            return self._complete(req, reply)
        if will_transit:
            resp = self._response(req, reply, transit=True, nsg=nsg, status=LoginStatus.SUCCESS)
            self.stage = nsg
            return resp
        return self._response(req, reply, transit=False, nsg=0, status=LoginStatus.SUCCESS)

    def _first_pdu(self, req: PDU) -> None:
        self.itt = req.itt
        self.isid = req.lun[:6]
        tsih = int.from_bytes(req.lun[6:8], "big")
        self.exp_cmdsn = req.cmdsn
        self.statsn = req.exp_statsn if req.exp_statsn else secrets.randbelow(1 << 31) + 1
        version_max, version_min = req.b2, req.b3
        if version_min > 0 or version_max < 0:
            raise LoginFailed(LoginStatus.UNSUPPORTED_VERSION, f"version {version_min}..{version_max}")
        if tsih:
            status = (LoginStatus.TOO_MANY_CONNECTIONS if tsih in self.portal.live_tsihs
                      else LoginStatus.SESSION_DOES_NOT_EXIST)
            raise LoginFailed(status, f"login names TSIH {tsih}: one connection per session")

    def _identify(self, pairs: list[tuple[str, str]]) -> None:
        keys = dict(pairs)
        initiator = keys.get("InitiatorName", "")
        if not initiator:
            raise LoginFailed(LoginStatus.MISSING_PARAMETER, "InitiatorName missing")
        for key in ("InitiatorName", "TargetName"):
            if key in keys and not _valid_name(keys[key]):
                raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"{key}={keys[key][:64]!r} is not an iSCSI name")
        self.initiator = initiator
        note_log_fields(initiator=initiator)
        self.initiator_alias = keys.get("InitiatorAlias", "")[:255]
        session_type = keys.get("SessionType", "Normal")
        if session_type not in ("Normal", "Discovery"):
            raise LoginFailed(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, f"SessionType={session_type}")
        self.discovery = session_type == "Discovery"
        if not self.discovery:
            name = keys.get("TargetName")
            if not name:
                raise LoginFailed(LoginStatus.MISSING_PARAMETER, "TargetName missing")
            note_log_fields(target=name)
            target = self.portal.targets.get(name)
            if target is None:
                raise LoginFailed(LoginStatus.NOT_FOUND, f"no target {name}")
            if not target.allows(self.initiator):
                raise LoginFailed(LoginStatus.AUTHORIZATION_FAILURE,
                                  f"{self.initiator} is not in {name}'s initiator list")
            self.target = target
        self.negotiator = Negotiator(self.portal.operational, discovery=self.discovery)

    def _chap_creds(self) -> ChapCredentials | None:
        return self.portal.discovery_chap if self.discovery else (self.target.chap if self.target else None)

    def _negotiate(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        assert self.negotiator is not None
        reply: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in IDENTITY_KEYS or key in _CHAP_KEYS:
                continue
            try:
                answer = self.negotiator.respond(key, value)
            except NegotiationError as exc:
                raise LoginFailed(LoginStatus.INITIATOR_ERROR, str(exc)) from None
            if answer is not None:
                reply.append((key, answer))
        return reply

    def _security(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        creds = self._chap_creds()
        reply: list[tuple[str, str]] = []
        if "AuthMethod" in keys:
            offered = [m.strip() for m in keys["AuthMethod"].split(",")]
            if creds is not None:
                if "CHAP" not in offered:
                    raise LoginFailed(LoginStatus.AUTH_FAILURE, f"CHAP required, offered {offered}")
                self.auth_method = "CHAP"
                self.chap = ChapTarget(creds, self.portal.chap_algorithms)
            elif "None" in offered:
                self.auth_method = "None"
                self.authenticated = True
            else:
                raise LoginFailed(LoginStatus.AUTH_FAILURE, f"no acceptable AuthMethod in {offered}")
            reply.append(("AuthMethod", self.auth_method))
        elif self.auth_method is None:
            if creds is not None and "CHAP_A" not in keys:
                # No AuthMethod offered: its default is None, which this target does not accept.
                raise LoginFailed(LoginStatus.AUTH_FAILURE, "authentication required")
            if creds is None:
                self.authenticated = True
        try:
            if "CHAP_A" in keys:
                if self.chap is None:
                    raise LoginFailed(LoginStatus.INITIATOR_ERROR, "CHAP_A without AuthMethod=CHAP")
                reply += self.chap.offer(keys["CHAP_A"])
            elif "CHAP_R" in keys or "CHAP_N" in keys:
                if self.chap is None:
                    raise LoginFailed(LoginStatus.INITIATOR_ERROR, "CHAP_R without AuthMethod=CHAP")
                reply += self.chap.verify(keys)
                self.authenticated = True
                log.info("CHAP: %s authenticated as %s", self.initiator, keys.get("CHAP_N"))
        except ChapError as exc:
            raise LoginFailed(LoginStatus.AUTH_FAILURE, str(exc)) from None
        return reply

    def _complete(self, req: PDU, reply: list[tuple[str, str]]) -> PDU:
        assert self.negotiator is not None
        if not self.authenticated:
            raise LoginFailed(LoginStatus.AUTH_FAILURE, "authentication not completed")
        params = self.negotiator.finish()
        reply += self.negotiator.unsolicited_declarations()
        tsih = secrets.randbelow(0xFFFE) + 1
        while tsih in self.portal.live_tsihs:
            tsih = secrets.randbelow(0xFFFE) + 1
        resp = self._response(req, reply, transit=True, nsg=FULL_FEATURE, status=LoginStatus.SUCCESS, tsih=tsih)
        assert self.statsn is not None
        self.result = LoginResult(
            initiator=self.initiator,
            isid=self.isid,
            tsih=tsih,
            discovery=self.discovery,
            target=self.target,
            params=params,
            exp_cmdsn=self.exp_cmdsn,
            statsn=self.statsn,
            initiator_alias=self.initiator_alias,
        )
        self.stage = FULL_FEATURE
        return resp

    def _response(self, req: PDU, reply: list[tuple[str, str]], *, transit: bool, nsg: int,
                  status: LoginStatus, tsih: int = 0) -> PDU:
        if self.target is not None and not self.sent_tpgt and status == LoginStatus.SUCCESS:
            reply = reply + [("TargetPortalGroupTag", str(self.target.portal_group_tag))]
            if self.target.alias:
                reply.append(("TargetAlias", self.target.alias))
            self.sent_tpgt = True
        csg = self.stage if status == LoginStatus.SUCCESS else ((req.flags >> 2) & 3)
        flags = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
        statsn = self.statsn if self.statsn is not None else 0
        if self.statsn is not None:
            self.statsn = (self.statsn + 1) & 0xFFFFFFFF
        lun = (self.isid or req.lun[:6]) + tsih.to_bytes(2, "big")
        return PDU(
            Opcode.LOGIN_RESPONSE,
            flags=flags,
            b2=0,
            b3=0,
            lun=lun,
            itt=req.itt,
            w24=statsn,
            w28=self.exp_cmdsn,
            w32=(self.exp_cmdsn + 31) & 0xFFFFFFFF,
            w36=(status >> 8) << 24 | (status & 0xFF) << 16,
            data=format_text(reply),
        )

"""CHAP (RFC 1994) as iSCSI uses it (RFC 7143 s.12.1.3): both roles, sans-IO.

The target side issues a challenge and checks the initiator's response; with mutual CHAP it also
answers the initiator's challenge. The initiator side (used by hostctl and tests) does the
reverse. MD5 is what most initiators speak; SHA-256 (and SHA-1, SHA3-256) are offered where the
initiator asks for them, per the IANA PPP CHAP algorithm registry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

#: CHAP_A algorithm numbers -> (hashlib name, challenge length in bytes)
ALGORITHMS: dict[int, tuple[str, int]] = {
    5: ("md5", 16),
    6: ("sha1", 20),
    7: ("sha256", 32),
    8: ("sha3_256", 32),
}
#: our preference when several are offered is the initiator's order; these are the ones we allow
DEFAULT_ALLOWED = (7, 8, 6, 5)


class ChapError(Exception):
    """Authentication failed (login status 02/01)."""


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    """A user name and secret; ``mutual_*`` set means the target can prove itself too."""

    username: str
    secret: str
    mutual_username: str | None = None
    mutual_secret: str | None = None


def decode_binary(value: str) -> bytes:
    """Decode an iSCSI binary value: 0x.. hex or 0b.. base64 (RFC 7143 s.6.1)."""
    if len(value) > 2 and value[:2] in ("0x", "0X"):
        digits = value[2:]
        if len(digits) % 2:
            digits = "0" + digits
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise ChapError(f"bad hex value {value[:40]!r}") from None
    if len(value) > 2 and value[:2] in ("0b", "0B"):
        try:
            return base64.b64decode(value[2:], validate=True)
        except ValueError:
            raise ChapError(f"bad base64 value {value[:40]!r}") from None
    raise ChapError(f"binary value {value[:40]!r} has neither 0x nor 0b prefix")


def encode_hex(data: bytes) -> str:
    return "0x" + data.hex()


def chap_response(algorithm: int, ident: int, secret: bytes, challenge: bytes) -> bytes:
    """R = H(identifier || secret || challenge)."""
    name = ALGORITHMS[algorithm][0]
    return hashlib.new(name, bytes([ident]) + secret + challenge).digest()


class ChapTarget:
    """The target's half of one CHAP exchange."""

    def __init__(self, creds: ChapCredentials, allowed: tuple[int, ...] = DEFAULT_ALLOWED) -> None:
        self.creds = creds
        self.allowed = allowed
        self.algorithm = 0
        self.ident = 0
        self.challenge = b""
        self.done = False

    def offer(self, chap_a: str) -> list[tuple[str, str]]:
        """Answer CHAP_A=<list> with the chosen algorithm and our challenge."""
        try:
            offered = [int(x) for x in chap_a.split(",")]
        except ValueError:
            raise ChapError(f"CHAP_A={chap_a!r} is not a list of numbers") from None
        pick = next((a for a in offered if a in self.allowed and a in ALGORITHMS), None)
        if pick is None:
            raise ChapError(f"no common CHAP algorithm in {chap_a!r}")
        self.algorithm = pick
        self.ident = secrets.randbelow(256)
        self.challenge = secrets.token_bytes(ALGORITHMS[pick][1])
        return [("CHAP_A", str(pick)), ("CHAP_I", str(self.ident)), ("CHAP_C", encode_hex(self.challenge))]

    def verify(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """Check CHAP_N/CHAP_R; answer CHAP_I/CHAP_C with our own proof when mutual is asked."""
        if not self.challenge:
            raise ChapError("CHAP_R before a challenge was sent")
        name, resp = keys.get("CHAP_N"), keys.get("CHAP_R")
        if name is None or resp is None:
            raise ChapError("CHAP_N and CHAP_R are required")
        expected = chap_response(self.algorithm, self.ident, self.creds.secret.encode(), self.challenge)
        # compare bytes: compare_digest refuses non-ASCII str, and CHAP_N may hold any UTF-8
        name_ok = hmac.compare_digest(name.encode("utf-8", "surrogateescape"), self.creds.username.encode())
        if not (name_ok and hmac.compare_digest(decode_binary(resp), expected)):
            raise ChapError(f"CHAP response from {name[:64]!r} does not match")
        self.done = True
        if "CHAP_I" not in keys and "CHAP_C" not in keys:
            return []
        if self.creds.mutual_username is None or self.creds.mutual_secret is None:
            raise ChapError("initiator asked for mutual CHAP but the target has no mutual secret")
        try:
            ident = int(keys["CHAP_I"], 0)
        except (KeyError, ValueError):
            raise ChapError("mutual CHAP needs a numeric CHAP_I") from None
        challenge = decode_binary(keys.get("CHAP_C", ""))
        if not 0 <= ident <= 255 or len(challenge) < 1 or len(challenge) > 1024:
            raise ChapError("mutual CHAP_I/CHAP_C out of range")
        if challenge == self.challenge:
            raise ChapError("initiator reflected our challenge")
        proof = chap_response(self.algorithm, ident, self.creds.mutual_secret.encode(), challenge)
        return [("CHAP_N", self.creds.mutual_username), ("CHAP_R", encode_hex(proof))]


class ChapInitiator:
    """The initiator's half: answer the target's challenge and (mutual) check its proof."""

    def __init__(self, creds: ChapCredentials, algorithms: tuple[int, ...] = (5,)) -> None:
        self.creds = creds
        self.algorithms = algorithms
        self.algorithm = 0
        self.my_ident = 0
        self.my_challenge = b""

    def first_keys(self) -> list[tuple[str, str]]:
        return [("CHAP_A", ",".join(str(a) for a in self.algorithms))]

    def answer(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        try:
            self.algorithm = int(keys["CHAP_A"])
            ident = int(keys["CHAP_I"], 0)
            challenge = decode_binary(keys["CHAP_C"])
        except (KeyError, ValueError):
            raise ChapError("target sent no usable CHAP_A/CHAP_I/CHAP_C") from None
        if self.algorithm not in self.algorithms:
            raise ChapError(f"target chose CHAP_A={self.algorithm}, which we did not offer")
        resp = chap_response(self.algorithm, ident, self.creds.secret.encode(), challenge)
        out = [("CHAP_N", self.creds.username), ("CHAP_R", encode_hex(resp))]
        if self.creds.mutual_secret is not None:
            self.my_ident = secrets.randbelow(256)
            self.my_challenge = secrets.token_bytes(ALGORITHMS[self.algorithm][1])
            out += [("CHAP_I", str(self.my_ident)), ("CHAP_C", encode_hex(self.my_challenge))]
        return out

    def check_target(self, keys: dict[str, str]) -> None:
        if self.creds.mutual_secret is None:
            return
        name, resp = keys.get("CHAP_N"), keys.get("CHAP_R")
        if name is None or resp is None:
            raise ChapError("target did not prove itself (no CHAP_N/CHAP_R)")
        expected = chap_response(self.algorithm, self.my_ident, self.creds.mutual_secret.encode(),
                                 self.my_challenge)
        if name != self.creds.mutual_username or not hmac.compare_digest(decode_binary(resp), expected):
            raise ChapError("target's mutual CHAP response does not match")

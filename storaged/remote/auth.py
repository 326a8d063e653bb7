"""Mutual authentication of two arrays by HMAC-SHA256 challenge/response (sans-IO).

Both arrays share a secret per peer, as DRBD's cram-hmac or iSCSI CHAP do: no PKI to run for a
two-site setup. The exchange is::

    client -> HELLO      {name, uuid, min_version, max_version, nonce_c}
    server -> HELLO_ACK  {name, uuid, version, nonce_s}           (or ERROR, close)
    client -> AUTH       {proof_c = HMAC(K, "client" | v | offered | nonce_c | nonce_s | name_c | name_s)}
    server -> AUTH_OK    {proof_s = HMAC(K, "server" | ...same fields...)}   (or ERROR AUTH_FAILED)

Each proof covers both fresh 32-byte nonces, so it cannot be replayed on another connection, and
a role label, so a server's proof can never be reflected back as a client's (and vice versa).
The client proves itself first, so an unauthenticated caller gets no proof to attack offline.
The names, the negotiated version and the range the client offered are covered too, so none
can be altered in flight (no downgrade to an older version both ends still speak).
Both ends then derive per-direction frame keys (``session_keys()``), and every later frame
carries a tag (:mod:`storaged.remote.integrity`). There is no encryption.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any

from .integrity import derive_keys
from .protocol import (
    MAX_VERSION,
    MIN_VERSION,
    Buffer,
    Frame,
    FrameType,
    ProtocolError,
    Status,
    decode_json,
    encode_frame,
    encode_json,
    error_message,
)

NONCE_SIZE = 32
CLIENT_LABEL = b"storaged-link client proof"
SERVER_LABEL = b"storaged-link server proof"


class HandshakeError(Exception):
    """The handshake failed; the connection answers ERROR ``status`` (if it can) and closes."""

    def __init__(self, status: Status, message: str, *, peer_name: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: the array name the peer claimed, for the log ("" if it never said)
        self.peer_name = peer_name


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def _field(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def proof(secret: str | bytes, label: bytes, version: int, nonce_c: bytes, nonce_s: bytes,
          name_c: str, name_s: str, *, offered: tuple[int, int]) -> bytes:
    """HMAC-SHA256 over length-prefixed fields, so no two field lists give the same message.
    ``offered`` is the client's (min, max) version range as its HELLO said."""
    key = secret.encode() if isinstance(secret, str) else secret
    msg = b"".join([_field(label), struct.pack(">BBB", version, *offered), _field(nonce_c), _field(nonce_s),
                    _field(name_c.encode()), _field(name_s.encode())])
    return hmac.new(key, msg, hashlib.sha256).digest()


def pick_version(ours: tuple[int, int], theirs: tuple[int, int]) -> int | None:
    """The highest version in both ranges, or None."""
    lo, hi = max(ours[0], theirs[0]), min(ours[1], theirs[1])
    return hi if lo <= hi else None


def _get_str(obj: dict[str, Any], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or len(v) > 256:
        raise ProtocolError(f"handshake field {key!r} missing or invalid")
    return v


def _get_int(obj: dict[str, Any], key: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255:
        raise ProtocolError(f"handshake field {key!r} missing or invalid")
    return v


def _get_hex(obj: dict[str, Any], key: str, size: int) -> bytes:
    v = obj.get(key)
    try:
        b = bytes.fromhex(v) if isinstance(v, str) else b""
    except ValueError:
        b = b""
    if len(b) != size:
        raise ProtocolError(f"handshake field {key!r} must be {size} bytes of hex")
    return b


def _error_frame(frame: Frame) -> HandshakeError:
    try:
        status = Status(frame.status)
    except ValueError:
        status = Status.INTERNAL
    return HandshakeError(status, f"peer refused: {status.name}: {error_message(frame.payload)}")


class ClientHandshake:
    """The connecting side: sends HELLO, answers the challenge, checks the server's proof."""

    def __init__(self, name: str, uuid: str, peer_name: str, secret: str | bytes, *,
                 versions: tuple[int, int] = (MIN_VERSION, MAX_VERSION), nonce: bytes | None = None) -> None:
        self.name, self.uuid, self.peer_name, self.secret = name, uuid, peer_name, secret
        self.versions = versions
        self.nonce = nonce or new_nonce()
        self.peer_nonce = b""
        self.peer_uuid = ""
        self.version: int | None = None
        self.done = False
        self._state = "start"

    def hello(self) -> list[Buffer]:
        self._state = "hello"
        body = {"name": self.name, "uuid": self.uuid, "min_version": self.versions[0],
                "max_version": self.versions[1], "nonce": self.nonce.hex()}
        return encode_frame(FrameType.HELLO, payload=encode_json(body), version=self.versions[1])

    def receive(self, frame: Frame) -> list[Buffer]:
        """Handle one frame from the server; returns frames to send; raises HandshakeError."""
        if frame.type == FrameType.ERROR:
            raise _error_frame(frame)
        try:
            if self._state == "hello" and frame.type == FrameType.HELLO_ACK:
                return self._on_hello_ack(frame)
            if self._state == "auth" and frame.type == FrameType.AUTH_OK:
                return self._on_auth_ok(frame)
        except ProtocolError as e:
            raise HandshakeError(Status.BAD_REQUEST, str(e)) from None
        raise HandshakeError(Status.WRONG_STATE, f"unexpected {frame.type.name} during the handshake")

    def _on_hello_ack(self, frame: Frame) -> list[Buffer]:
        body = decode_json(frame.payload)
        name = _get_str(body, "name")
        version = _get_int(body, "version")
        self.peer_nonce = _get_hex(body, "nonce", NONCE_SIZE)
        self.peer_uuid = _get_str(body, "uuid")
        if name != self.peer_name:
            raise HandshakeError(Status.AUTH_FAILED, f"expected array {self.peer_name!r}, reached {name!r}")
        if not self.versions[0] <= version <= self.versions[1] or frame.version != version:
            raise HandshakeError(Status.UNSUPPORTED_VERSION, f"server chose unsupported version {version}")
        if self.peer_nonce == self.nonce:
            raise HandshakeError(Status.AUTH_FAILED, "server echoed our nonce (reflection attempt?)")
        self.version = version
        self._state = "auth"
        p = proof(self.secret, CLIENT_LABEL, version, self.nonce, self.peer_nonce, self.name, self.peer_name,
                  offered=self.versions)
        return encode_frame(FrameType.AUTH, payload=encode_json({"proof": p.hex()}), version=version)

    def _on_auth_ok(self, frame: Frame) -> list[Buffer]:
        assert self.version is not None
        got = _get_hex(decode_json(frame.payload), "proof", hashlib.sha256().digest_size)
        want = proof(self.secret, SERVER_LABEL, self.version, self.nonce, self.peer_nonce, self.name,
                     self.peer_name, offered=self.versions)
        if not hmac.compare_digest(got, want):
            raise HandshakeError(Status.AUTH_FAILED, f"array {self.peer_name!r} failed to prove the shared secret")
        self.done = True
        self._state = "done"
        return []

    def session_keys(self) -> tuple[bytes, bytes]:
        """(key for the frames we send, key for the frames we receive), once ``done``."""
        assert self.done and self.version is not None
        k = derive_keys(self.secret, self.version, self.nonce, self.peer_nonce, self.name, self.peer_name)
        return k.client_to_server, k.server_to_client


class ServerHandshake:
    """The accepting side: picks a version, challenges, checks the client's proof, proves itself."""

    def __init__(self, name: str, uuid: str, secrets: dict[str, str], *,
                 versions: tuple[int, int] = (MIN_VERSION, MAX_VERSION), nonce: bytes | None = None) -> None:
        self.name, self.uuid, self.secrets = name, uuid, secrets
        self.versions = versions
        self.nonce = nonce or new_nonce()
        self.peer_nonce = b""
        self.peer_name = ""  # as claimed until ``done``
        self.peer_uuid = ""
        self.offered = (0, 0)  # the client's version range
        self._secret = ""  # the one the client proved it holds
        self.version: int | None = None
        self.done = False
        self._state = "hello"

    def receive(self, frame: Frame) -> list[Buffer]:
        try:
            if self._state == "hello" and frame.type == FrameType.HELLO:
                return self._on_hello(frame)
            if self._state == "auth" and frame.type == FrameType.AUTH:
                return self._on_auth(frame)
        except ProtocolError as e:
            raise HandshakeError(Status.BAD_REQUEST, str(e), peer_name=self.peer_name) from None
        if frame.type == FrameType.ERROR:
            raise _error_frame(frame)
        raise HandshakeError(Status.WRONG_STATE, f"unexpected {frame.type.name} during the handshake",
                             peer_name=self.peer_name)

    def _on_hello(self, frame: Frame) -> list[Buffer]:
        body = decode_json(frame.payload)
        self.peer_name = _get_str(body, "name")
        self.peer_uuid = _get_str(body, "uuid")
        theirs = (_get_int(body, "min_version"), _get_int(body, "max_version"))
        self.peer_nonce = _get_hex(body, "nonce", NONCE_SIZE)
        self.offered = theirs
        version = pick_version(self.versions, theirs)
        if version is None:
            raise HandshakeError(Status.UNSUPPORTED_VERSION,
                                 f"no common protocol version: we speak {self.versions[0]}..{self.versions[1]}, "
                                 f"peer {theirs[0]}..{theirs[1]}", peer_name=self.peer_name)
        if self.peer_name not in self.secrets:
            raise HandshakeError(Status.AUTH_FAILED, "authentication failed", peer_name=self.peer_name)
        if self.peer_nonce == self.nonce:
            raise HandshakeError(Status.AUTH_FAILED, "authentication failed", peer_name=self.peer_name)
        self.version = version
        self._state = "auth"
        body = {"name": self.name, "uuid": self.uuid, "version": version, "nonce": self.nonce.hex()}
        return encode_frame(FrameType.HELLO_ACK, payload=encode_json(body), version=version)

    def _on_auth(self, frame: Frame) -> list[Buffer]:
        assert self.version is not None
        secret = self._secret = self.secrets[self.peer_name]
        got = _get_hex(decode_json(frame.payload), "proof", hashlib.sha256().digest_size)
        want = proof(secret, CLIENT_LABEL, self.version, self.peer_nonce, self.nonce, self.peer_name, self.name,
                     offered=self.offered)
        if frame.version != self.version or not hmac.compare_digest(got, want):
            raise HandshakeError(Status.AUTH_FAILED, "authentication failed", peer_name=self.peer_name)
        self.done = True
        self._state = "done"
        mine = proof(secret, SERVER_LABEL, self.version, self.peer_nonce, self.nonce, self.peer_name, self.name,
                     offered=self.offered)
        return encode_frame(FrameType.AUTH_OK, payload=encode_json({"proof": mine.hex()}), version=self.version)

    def session_keys(self) -> tuple[bytes, bytes]:
        """(key for the frames we send, key for the frames we receive), once ``done``."""
        assert self.done and self.version is not None
        k = derive_keys(self._secret, self.version, self.peer_nonce, self.nonce, self.peer_name,
                        self.name)
        return k.server_to_client, k.client_to_server

"""Integrity and replay protection of every frame after the handshake (sans-IO).

The handshake proves that both ends hold the shared secret, but a CRC is no defence against
someone on the path who injects or rewrites frames afterwards. So from the first frame after the
handshake on, every frame carries a tag::

    tag = HMAC-SHA256(K_direction, sequence u64 | 28-byte header | payload)[:16]

* **Keys** come from HKDF-SHA256 (RFC 5869) over the shared secret, salted with both handshake
  nonces (fresh per connection) and bound to the version and both array names. Each direction has
  its own key, so a frame cannot be reflected back to its sender.
* **The sequence number** is implicit: each side counts the frames it sent and received since
  the handshake (TCP keeps them in order). A replayed, reordered, dropped or injected frame is
  checked against the wrong number, or without the key, and its tag does not match.
* HMAC-SHA256 and not TLS: measured in ``benchmarks/bench_link.py`` (see docs/remote-link.md),
  and Python's ``ssl`` has no pre-shared-key support before 3.13, so TLS would need a PKI.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview

#: bytes of tag after the header of every frame sent after the handshake (128 bits)
TAG_SIZE = 16
_SEQ = struct.Struct(">Q")
_KEY_LABEL = b"storaged-link frame keys"


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256."""
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 output length must be 1..8160 bytes")
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out += block
    return out[:length]


def _field(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two frame keys of one connection."""

    client_to_server: bytes
    server_to_client: bytes


def derive_keys(secret: str | bytes, version: int, nonce_c: bytes, nonce_s: bytes, name_c: str,
                name_s: str) -> SessionKeys:
    """Per-connection, per-direction keys; the proofs use the secret itself as an HMAC key, these
    an HKDF output, so a tag is never a proof and the other way round."""
    ikm = secret.encode() if isinstance(secret, str) else secret
    prk = hkdf_extract(nonce_c + nonce_s, ikm)
    info = b"".join([_field(_KEY_LABEL), bytes([version]), _field(name_c.encode()), _field(name_s.encode())])
    return SessionKeys(hkdf_expand(prk, info + b"client->server"), hkdf_expand(prk, info + b"server->client"))


class FrameMac:
    """One direction of one connection: its key and the sequence number of the next frame."""

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self.seq = 0

    def tag(self, head: Buffer, payload: Iterable[Buffer]) -> bytes:
        """The tag of the next frame (consumes its sequence number)."""
        h = self._base.copy()
        h.update(_SEQ.pack(self.seq))
        h.update(head)
        for part in payload:
            h.update(part)
        self.seq += 1
        return h.digest()[:TAG_SIZE]

    def seal(self, frame: Sequence[Buffer]) -> list[Buffer]:
        """``[header, *payload parts]`` (one encoded frame) -> ``[header + tag, *payload parts]``."""
        head, parts = frame[0], frame[1:]
        return [bytes(head) + self.tag(head, parts), *parts]

    def verify(self, head: Buffer, tag: Buffer, payload: Buffer) -> bool:
        """Whether ``tag`` is the next frame's; constant-time comparison."""
        return hmac.compare_digest(self.tag(head, (payload,)), bytes(tag))

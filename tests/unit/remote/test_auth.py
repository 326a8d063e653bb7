"""The HMAC handshake without sockets: success, wrong secret either way, unknown array, version
negotiation, replayed and reflected proofs, out-of-order frames."""

from __future__ import annotations

import pytest

from storaged.remote.auth import (
    CLIENT_LABEL,
    SERVER_LABEL,
    ClientHandshake,
    HandshakeError,
    ServerHandshake,
    pick_version,
    proof,
)
from storaged.remote.protocol import (
    MAX_VERSION,
    MIN_VERSION,
    Frame,
    FrameType,
    Status,
    encode_frame,
    encode_json,
)
from storaged.remote.reader import FrameReader

from .helpers import frames_of, join

SECRETS = {"A": "correct horse battery staple"}
OFFER = (MIN_VERSION, MAX_VERSION)


def one(bufs: list) -> Frame:
    (f,) = frames_of(join(bufs))
    return f


def run(client: ClientHandshake, server: ServerHandshake) -> None:
    """Drive both ends to completion; HandshakeError propagates from whichever side fails."""
    to_server = [one(client.hello())]
    while to_server:
        f = to_server.pop()
        for reply in frames_of(join(server.receive(f))):
            out = client.receive(reply)
            if out:
                to_server.append(one(out))


def test_handshake_succeeds_and_agrees() -> None:
    c = ClientHandshake("A", "uuid-a", "B", SECRETS["A"])
    s = ServerHandshake("B", "uuid-b", SECRETS)
    run(c, s)
    assert c.done and s.done
    assert c.version == s.version == 2
    assert c.session_keys() == s.session_keys()[::-1]  # one key per direction, both ends agree
    assert c.session_keys()[0] != c.session_keys()[1]
    assert (s.peer_name, s.peer_uuid, c.peer_uuid) == ("A", "uuid-a", "uuid-b")


def test_wrong_secret_refused_by_server() -> None:
    c = ClientHandshake("A", "u", "B", "guess")
    s = ServerHandshake("B", "u", SECRETS)
    with pytest.raises(HandshakeError) as e:
        run(c, s)
    assert e.value.status == Status.AUTH_FAILED and e.value.peer_name == "A"
    assert not s.done and not c.done


def test_impostor_server_detected_by_client() -> None:
    c = ClientHandshake("A", "u", "B", SECRETS["A"])
    s = ServerHandshake("B", "u", {"A": "impostor does not know it"})
    hello_ack = frames_of(join(s.receive(one(c.hello()))))[0]
    auth = one(c.receive(hello_ack))
    # a fake server that skips checking and answers with a proof made from its wrong secret
    fake = proof("impostor does not know it", SERVER_LABEL, 2, c.nonce, s.nonce, "A", "B", offered=OFFER)
    with pytest.raises(HandshakeError) as e:
        c.receive(one(encode_frame(FrameType.AUTH_OK, payload=encode_json({"proof": fake.hex()}))))
    assert e.value.status == Status.AUTH_FAILED and not c.done
    assert auth.type == FrameType.AUTH


def test_client_refuses_wrong_array_name() -> None:
    c = ClientHandshake("A", "u", "B", SECRETS["A"])
    s = ServerHandshake("C", "u", SECRETS)
    with pytest.raises(HandshakeError, match="expected array 'B'"):
        run(c, s)


def test_unknown_array_refused_at_hello() -> None:
    s = ServerHandshake("B", "u", SECRETS)
    with pytest.raises(HandshakeError) as e:
        s.receive(one(ClientHandshake("Z", "u", "B", "x").hello()))
    assert e.value.status == Status.AUTH_FAILED and e.value.peer_name == "Z"


def test_version_negotiation() -> None:
    assert pick_version((1, 3), (2, 5)) == 3
    assert pick_version((1, 1), (2, 3)) is None
    s = ServerHandshake("B", "u", SECRETS)
    c = ClientHandshake("A", "u", "B", SECRETS["A"], versions=(3, 4))
    with pytest.raises(HandshakeError) as e:
        s.receive(one(c.hello()))
    assert e.value.status == Status.UNSUPPORTED_VERSION
    # the client turns the server's ERROR frame into the same status
    from storaged.remote.protocol import encode_error

    with pytest.raises(HandshakeError) as e2:
        c.receive(one(encode_error(Status.UNSUPPORTED_VERSION, "no common version")))
    assert e2.value.status == Status.UNSUPPORTED_VERSION


def test_version_1_peer_refused_with_both_ranges() -> None:
    """v1 had no frame tags: its HELLO (min = max = 1) gets UNSUPPORTED_VERSION naming both ranges."""
    old = ClientHandshake("A", "u", "B", SECRETS["A"], versions=(1, 1))
    with pytest.raises(HandshakeError) as e:
        ServerHandshake("B", "u", SECRETS).receive(one(old.hello()))
    assert e.value.status == Status.UNSUPPORTED_VERSION and "2..2" in e.value.message and "1..1" in e.value.message


def test_server_picks_highest_common_version() -> None:
    c = ClientHandshake("A", "u", "B", SECRETS["A"], versions=(1, 4))
    s = ServerHandshake("B", "u", SECRETS, versions=(1, 3))
    run(c, s)
    assert c.version == s.version == 3


def test_replayed_client_proof_is_refused() -> None:
    c = ClientHandshake("A", "u", "B", SECRETS["A"])
    s1 = ServerHandshake("B", "u", SECRETS)
    ack = frames_of(join(s1.receive(one(c.hello()))))[0]
    recorded_auth = one(c.receive(ack))
    # the eavesdropper replays HELLO and AUTH on a new connection: the server's nonce is new
    s2 = ServerHandshake("B", "u", SECRETS)
    s2.receive(one(c.hello()))
    with pytest.raises(HandshakeError) as e:
        s2.receive(recorded_auth)
    assert e.value.status == Status.AUTH_FAILED


def test_reflected_server_proof_is_refused() -> None:
    s = ServerHandshake("B", "u", SECRETS)
    c = ClientHandshake("A", "u", "B", SECRETS["A"])
    s.receive(one(c.hello()))
    # a server-role proof over exactly these nonces and names (as a reflection attack would obtain)
    reflected = proof(SECRETS["A"], SERVER_LABEL, 2, c.nonce, s.nonce, "A", "B", offered=OFFER)
    with pytest.raises(HandshakeError):
        s.receive(one(encode_frame(FrameType.AUTH, payload=encode_json({"proof": reflected.hex()}))))
    # a client-role proof with the nonces swapped (from the mirror-image connection) fails too
    s = ServerHandshake("B", "u", SECRETS)
    s.receive(one(c.hello()))
    swapped = proof(SECRETS["A"], CLIENT_LABEL, 2, s.nonce, c.nonce, "A", "B", offered=OFFER)
    with pytest.raises(HandshakeError):
        s.receive(one(encode_frame(FrameType.AUTH, payload=encode_json({"proof": swapped.hex()}))))


def test_echoed_nonce_refused() -> None:
    nonce = bytes(range(32))
    s = ServerHandshake("B", "u", SECRETS, nonce=nonce)
    with pytest.raises(HandshakeError):
        s.receive(one(ClientHandshake("A", "u", "B", SECRETS["A"], nonce=nonce).hello()))


def test_proof_covers_every_field() -> None:
    base = ("k", CLIENT_LABEL, 1, b"n" * 32, b"m" * 32, "A", "B")
    ref = proof(*base, offered=(1, 2))
    for i, alt in enumerate(["k2", SERVER_LABEL, 2, b"x" * 32, b"y" * 32, "A2", "B2"]):
        args = list(base)
        args[i] = alt
        assert proof(*args, offered=(1, 2)) != ref
    assert proof(*base, offered=(2, 2)) != ref and proof(*base, offered=(1, 3)) != ref  # no downgrade
    assert proof("k", CLIENT_LABEL, 1, b"n" * 32, b"m" * 32, "AB", "", offered=(1, 2)) != proof(
        "k", CLIENT_LABEL, 1, b"n" * 32, b"m" * 32, "A", "B", offered=(1, 2))  # length-prefixed: no ambiguity


@pytest.mark.parametrize("frame", [
    Frame(FrameType.AUTH, payload=encode_json({"proof": "00" * 32})),  # AUTH before HELLO
    Frame(FrameType.REQUEST, opcode=2),
    Frame(FrameType.HELLO, payload=b"not json"),
    Frame(FrameType.HELLO, payload=encode_json({"name": "A", "uuid": "u", "min_version": 1,
                                                "max_version": 1, "nonce": "abcd"})),  # short nonce
])
def test_server_rejects_bad_openings(frame: Frame) -> None:
    with pytest.raises(HandshakeError) as e:
        ServerHandshake("B", "u", SECRETS).receive(frame)
    assert e.value.status in (Status.WRONG_STATE, Status.BAD_REQUEST)


def test_frames_after_hello_use_the_negotiated_version() -> None:
    c = ClientHandshake("A", "u", "B", SECRETS["A"], versions=(1, 2))
    s = ServerHandshake("B", "u", SECRETS, versions=(1, 2))
    ack = s.receive(one(c.hello()))
    r = FrameReader(version=2)
    r.feed(join(ack))
    assert r.next_frame() is not None

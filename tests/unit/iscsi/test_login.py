"""Login phase: stages, negotiation, CHAP (one-way, mutual, MD5 and SHA-256), ACLs."""

from __future__ import annotations

import pytest

from storaged.iscsi.chap import ChapCredentials, ChapInitiator, chap_response, decode_binary
from storaged.iscsi.connection import CloseConnection, LoggedIn
from storaged.iscsi.params import Negotiator
from storaged.iscsi.pdu import parse_text

from .helpers import INITIATOR, TARGET, Wire, login_pdu, make_portal

CREDS = ChapCredentials("host1", "host1-secret-123", "array", "array-secret-456")


def status(pdu) -> int:  # type: ignore[no-untyped-def]
    return (pdu.w36 >> 24) << 8 | (pdu.w36 >> 16) & 0xFF


def base_keys(target: str = TARGET) -> list[tuple[str, str]]:
    return [("InitiatorName", INITIATOR), ("TargetName", target), ("SessionType", "Normal")]


def test_login_without_auth_negotiates_and_reaches_full_feature_phase() -> None:
    w = Wire()
    got = w.login([("HeaderDigest", "CRC32C,None"), ("MaxBurstLength", "65536"), ("InitialR2T", "Yes"),
                   ("ImmediateData", "No"), ("FirstBurstLength", "1048576"), ("MaxRecvDataSegmentLength", "4096")])
    assert got["HeaderDigest"] == "CRC32C"
    assert got["MaxBurstLength"] == "65536"
    assert got["InitialR2T"] == "Yes"
    assert got["ImmediateData"] == "No"
    assert got["MaxRecvDataSegmentLength"] == "262144"  # the target's own declaration
    p = w.conn.params
    assert p.first_burst_length == 65536  # clamped to MaxBurstLength
    assert p.initiator_mrdsl == 4096 and p.header_digest
    assert any(isinstance(e, LoggedIn) for e in w.events)


def test_unknown_target_is_not_found() -> None:
    w = Wire()
    (resp,) = w.send(login_pdu(base_keys("iqn.2026-11.test:nope") + [("AuthMethod", "None")], 0, 1))
    assert status(resp) == 0x0203
    assert any(isinstance(e, CloseConnection) for e in w.events)


def test_initiator_not_in_acl_gets_authorization_failure() -> None:
    w = Wire(make_portal(allowed=frozenset({"iqn.2026-11.test:other"})))
    (resp,) = w.send(login_pdu(base_keys() + [("AuthMethod", "None")], 0, 1))
    assert status(resp) == 0x0202


def test_missing_initiator_name_is_missing_parameter() -> None:
    w = Wire()
    (resp,) = w.send(login_pdu([("TargetName", TARGET), ("AuthMethod", "None")], 0, 1))
    assert status(resp) == 0x0207


def test_chap_required_refuses_auth_none() -> None:
    w = Wire(make_portal(chap=CREDS))
    (resp,) = w.send(login_pdu(base_keys() + [("AuthMethod", "None")], 0, 1))
    assert status(resp) == 0x0201


def test_chap_required_refuses_skipping_security_stage() -> None:
    w = Wire(make_portal(chap=CREDS))
    (resp,) = w.send(login_pdu(base_keys(), 1, 3))
    assert status(resp) == 0x0201


def _chap_login(w: Wire, ini: ChapInitiator) -> list:  # type: ignore[type-arg]
    (r1,) = w.send(login_pdu(base_keys() + [("AuthMethod", "CHAP,None")], 0, 1, transit=False))
    assert status(r1) == 0 and dict(parse_text(r1.data))["AuthMethod"] == "CHAP"
    (r2,) = w.send(login_pdu(ini.first_keys(), 0, 1, transit=False))
    assert status(r2) == 0
    challenge = dict(parse_text(r2.data))
    (r3,) = w.send(login_pdu(ini.answer(challenge), 0, 1, transit=True))
    return [challenge, r3]


@pytest.mark.parametrize("algorithm", [5, 7])
def test_chap_one_way(algorithm: int) -> None:
    w = Wire(make_portal(chap=CREDS))
    ini = ChapInitiator(ChapCredentials("host1", "host1-secret-123"), (algorithm,))
    challenge, r3 = _chap_login(w, ini)
    assert challenge["CHAP_A"] == str(algorithm)
    assert len(decode_binary(challenge["CHAP_C"])) == (16 if algorithm == 5 else 32)
    assert status(r3) == 0 and r3.flags & 0x80  # transit to operational
    (r4,) = w.send(login_pdu([], 1, 3))
    assert status(r4) == 0 and w.conn.logged_in


@pytest.mark.parametrize("algorithm", [5, 7])
def test_chap_mutual_target_proves_itself(algorithm: int) -> None:
    w = Wire(make_portal(chap=CREDS))
    ini = ChapInitiator(CREDS, (algorithm,))
    _, r3 = _chap_login(w, ini)
    assert status(r3) == 0
    ini.check_target(dict(parse_text(r3.data)))  # raises if the target's proof is wrong


def test_chap_wrong_secret_fails() -> None:
    w = Wire(make_portal(chap=CREDS))
    ini = ChapInitiator(ChapCredentials("host1", "not-the-secret!"), (5,))
    _, r3 = _chap_login(w, ini)
    assert status(r3) == 0x0201


def test_chap_reflected_challenge_is_refused() -> None:
    w = Wire(make_portal(chap=CREDS))
    w.send(login_pdu(base_keys() + [("AuthMethod", "CHAP")], 0, 1, transit=False))
    (r2,) = w.send(login_pdu([("CHAP_A", "5")], 0, 1, transit=False))
    ch = dict(parse_text(r2.data))
    resp = chap_response(5, int(ch["CHAP_I"]), b"host1-secret-123", decode_binary(ch["CHAP_C"]))
    (r3,) = w.send(login_pdu([("CHAP_N", "host1"), ("CHAP_R", "0x" + resp.hex()),
                              ("CHAP_I", "1"), ("CHAP_C", ch["CHAP_C"])], 0, 1))
    assert status(r3) == 0x0201


def test_chap_base64_response_is_accepted() -> None:
    import base64

    w = Wire(make_portal(chap=CREDS))
    w.send(login_pdu(base_keys() + [("AuthMethod", "CHAP")], 0, 1, transit=False))
    (r2,) = w.send(login_pdu([("CHAP_A", "5")], 0, 1, transit=False))
    ch = dict(parse_text(r2.data))
    resp = chap_response(5, int(ch["CHAP_I"]), b"host1-secret-123", decode_binary(ch["CHAP_C"]))
    (r3,) = w.send(login_pdu([("CHAP_N", "host1"), ("CHAP_R", "0b" + base64.b64encode(resp).decode())], 0, 1))
    assert status(r3) == 0


def test_discovery_session_and_sendtargets_lists_only_visible_targets() -> None:
    portal = make_portal()
    from storaged.iscsi.portal import TargetInfo

    portal.targets["iqn.2026-11.test:hidden"] = TargetInfo("iqn.2026-11.test:hidden",
                                                           allowed_initiators=frozenset({"iqn.x:y"}))
    w = Wire(portal)
    (r1,) = w.send(login_pdu([("InitiatorName", INITIATOR), ("SessionType", "Discovery"),
                              ("AuthMethod", "None")], 0, 1))
    assert status(r1) == 0
    (r2,) = w.send(login_pdu([("MaxRecvDataSegmentLength", "8192")], 1, 3))
    assert status(r2) == 0
    from storaged.iscsi.pdu import PDU, Opcode, format_text

    (resp,) = w.send(PDU(Opcode.TEXT_REQUEST, flags=0x80, itt=9, w20=0xFFFFFFFF, w24=1,
                         data=format_text([("SendTargets", "All")])))
    pairs = parse_text(resp.data)
    assert ("TargetName", TARGET) in pairs
    assert ("TargetAddress", "127.0.0.1:3260,1") in pairs
    assert all(v != "iqn.2026-11.test:hidden" for _, v in pairs)


def test_negotiator_rejects_out_of_range_values() -> None:
    from storaged.iscsi.params import NegotiationError

    n = Negotiator({})
    with pytest.raises(NegotiationError):
        n.respond("MaxBurstLength", "100")
    assert n.respond("X-com.example.Private", "1") == "NotUnderstood"
    assert n.respond("ErrorRecoveryLevel", "2") == "0"

"""Any bytes in any login key end in a Login Response with an initiator-error or authentication
status and a log line: never an exception out of the login machine or CHAP."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storaged.iscsi.chap import ChapCredentials, ChapError, ChapTarget
from storaged.iscsi.connection import CloseConnection
from storaged.iscsi.pdu import PDU, Opcode, format_text, parse_text

from .helpers import INITIATOR, TARGET, Wire, login_pdu, make_portal

CREDS = ChapCredentials("host1", "host1-secret-123", "array", "array-secret-456")
KEYS = ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N",
        "CHAP_R", "HeaderDigest", "MaxRecvDataSegmentLength", "MaxBurstLength", "InitialR2T", "ErrorRecoveryLevel",
        "TargetAlias", "X-com.example.k"]


def status(pdu: PDU) -> int:
    return (pdu.w36 >> 24) << 8 | (pdu.w36 >> 16) & 0xFF


def _challenge(w: Wire) -> dict[str, str]:
    w.send(login_pdu([("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "CHAP")], 0, 1,
                     transit=False))
    (r2,) = w.send(login_pdu([("CHAP_A", "5")], 0, 1, transit=False))
    return dict(parse_text(r2.data))


@pytest.mark.parametrize("name", ["hüst1", "höst1", "\u0131", "host1\u00a0"])
def test_non_ascii_chap_name_is_an_authentication_failure(name: str, caplog: pytest.LogCaptureFixture) -> None:
    w = Wire(make_portal(chap=CREDS))
    _challenge(w)
    with caplog.at_level(logging.WARNING):
        (r3,) = w.send(login_pdu([("CHAP_N", name), ("CHAP_R", "0x" + "00" * 16)], 0, 1))
    assert r3.opcode == Opcode.LOGIN_RESPONSE and status(r3) == 0x0201
    assert any(isinstance(e, CloseConnection) for e in w.events)
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


def _item(key: str, value: bytes) -> bytes:
    return key.encode() + b"=" + value + b"\0"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chap=st.booleans(), after_challenge=st.booleans(),
       items=st.lists(st.tuples(st.sampled_from(KEYS), st.binary(max_size=64)), min_size=1, max_size=6),
       raw=st.binary(max_size=64))
def test_arbitrary_bytes_in_login_keys_give_a_clean_login_response(chap: bool, after_challenge: bool,
                                                                   items: list[tuple[str, bytes]],
                                                                   raw: bytes) -> None:
    w = Wire(make_portal(chap=CREDS if chap else None))
    if chap and after_challenge:
        _challenge(w)
        data = b"".join(_item(k, v) for k, v in items) + raw
    else:
        data = format_text([("InitiatorName", INITIATOR), ("TargetName", TARGET)])
        data += b"".join(_item(k, v) for k, v in items) + raw
    pdu = PDU(Opcode.LOGIN_REQUEST, flags=0x81, immediate=True, lun=bytes([0x80, 1, 2, 3, 4, 5, 0, 0]), itt=1,
              w24=1, data=data)
    out = w.send(pdu)
    (resp,) = out
    assert resp.opcode == Opcode.LOGIN_RESPONSE
    assert status(resp) == 0 or status(resp) >> 8 == 0x02  # success, or an initiator-side failure


text = st.text(max_size=80)


@settings(max_examples=400, deadline=None)
@given(keys=st.dictionaries(st.sampled_from(["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C", "CHAP_A"]),
                            st.one_of(text, st.from_regex(r"0[xXbB][0-9a-zA-Z+/=]{0,70}", fullmatch=True))),
       chap_a=text)
def test_chap_target_raises_only_chap_error(keys: dict[str, str], chap_a: str) -> None:
    target = ChapTarget(CREDS)
    try:
        target.offer(chap_a)
    except ChapError:
        target.offer("5")
    try:
        target.verify(keys)
    except ChapError:
        pass


@pytest.mark.parametrize("name", ["iqn.2026-11.test:a\nFAKE LOG LINE", "iqn.2026-11.test:a b", "x" * 224, "\x1b[2J"])
def test_initiator_name_that_is_not_an_iscsi_name_is_an_initiator_error(name: str) -> None:
    w = Wire()
    (resp,) = w.send(login_pdu([("InitiatorName", name), ("TargetName", TARGET), ("AuthMethod", "None")], 0, 1))
    assert status(resp) == 0x0200
    assert not w.conn.logged_in

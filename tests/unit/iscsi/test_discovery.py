"""SendTargets announces addresses an initiator can reach: never a wildcard."""

from __future__ import annotations

import pytest

from storaged.iscsi.pdu import PDU, Opcode, format_text, parse_text

from .helpers import INITIATOR, Wire, login_pdu, make_portal


def send_targets(portal_address: str, local: tuple[str, int] | None) -> list[str]:
    portal = make_portal()
    portal.addresses[:] = [portal_address]
    w = Wire(portal)
    w.conn.local_address = local
    w.send(login_pdu([("InitiatorName", INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "None")], 0, 1))
    w.send(login_pdu([], 1, 3))
    (resp,) = w.send(PDU(Opcode.TEXT_REQUEST, flags=0x80, itt=9, w20=0xFFFFFFFF, w24=1,
                         data=format_text([("SendTargets", "All")])))
    return [v for k, v in parse_text(resp.data) if k == "TargetAddress"]


@pytest.mark.parametrize("portal, local, announced", [
    ("0.0.0.0:3260", ("192.0.2.7", 3260), "192.0.2.7:3260,1"),
    ("[::]:3260", ("2001:db8::5", 3260), "[2001:db8::5]:3260,1"),
    ("10.1.1.1:3260", ("127.0.0.1", 3260), "10.1.1.1:3260,1"),  # a configured address stays as it is
])
def test_wildcard_portal_announces_the_address_the_connection_arrived_on(portal: str, local: tuple[str, int],
                                                                          announced: str) -> None:
    assert send_targets(portal, local) == [announced]

"""Hypothesis drives arbitrary PDUs into a logged-in sans-IO connection: it may Reject, answer or
close, but it never raises and never executes more commands than it was sent."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storaged.iscsi.connection import CloseConnection, ExecuteCommand
from storaged.iscsi.pdu import PDU, encode_bytes
from storaged.scsi.types import ScsiResult

from .helpers import Wire

pdus = st.builds(
    PDU,
    opcode=st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x1E, 0x20]),
    flags=st.integers(0, 255),
    immediate=st.booleans(),
    b2=st.integers(0, 255),
    b3=st.integers(0, 255),
    lun=st.binary(min_size=8, max_size=8),
    itt=st.integers(0, 2**32 - 1),
    w20=st.one_of(st.just(0xFFFFFFFF), st.integers(0, 2**32 - 1), st.integers(0, 70000)),
    w24=st.integers(0, 8),
    w28=st.integers(0, 2**32 - 1),
    w32=st.integers(0, 2**32 - 1),
    w36=st.integers(0, 4),
    w40=st.integers(0, 70000),
    w44=st.integers(0, 2**32 - 1),
    data=st.binary(max_size=2048),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pdus, min_size=1, max_size=12))
def test_random_pdus_after_login(seq: list[PDU]) -> None:
    w = Wire()
    w.login()
    commands_sent = 0
    executed = 0
    for pdu in seq:
        commands_sent += pdu.opcode == 0x01
        w.send_bytes(encode_bytes(pdu))
        for ev in w.executes():
            executed += 1
            w.complete(ev, ScsiResult(0, bytes(16)))
        assert executed <= commands_sent
        if any(isinstance(e, CloseConnection) for e in w.events):
            break


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_before_login(blob: bytes) -> None:
    w = Wire()
    w.send_bytes(blob)  # must not raise
    assert not any(isinstance(e, ExecuteCommand) for e in w.events)

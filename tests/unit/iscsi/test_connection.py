"""Full feature phase of the sans-IO target connection, driven in memory."""

from __future__ import annotations

from storaged.iscsi.connection import TMF, CloseConnection, ResetRequested
from storaged.iscsi.pdu import PDU, Opcode, encode_lun
from storaged.scsi.types import ScsiResult, Status

from .helpers import Wire, make_portal

READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0])
SENSE = bytes([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0])


def logged_in(**operational: str) -> Wire:
    w = Wire(make_portal(**operational))
    w.login([("MaxRecvDataSegmentLength", "1024"), ("MaxBurstLength", "2048"), ("FirstBurstLength", "1024"),
             ("InitialR2T", "No"), ("MaxOutstandingR2T", "2")])
    return w


def test_read_splits_data_in_by_mrdsl_and_collapses_status() -> None:
    w = logged_in()
    _, out = w.command(READ10, read=4096)
    assert out == []
    (ev,) = w.executes()
    assert ev.task.cdb[:10] == READ10
    pdus = w.complete(ev, ScsiResult(Status.GOOD, bytes(range(256)) * 16))
    assert [p.opcode for p in pdus] == [Opcode.DATA_IN] * 4
    assert [p.w36 for p in pdus] == [0, 1, 2, 3]  # DataSN
    assert [p.w40 for p in pdus] == [0, 1024, 2048, 3072]  # buffer offsets
    assert [bool(p.flags & 0x80) for p in pdus] == [False, True, False, True]  # F per MaxBurstLength
    assert pdus[-1].flags & 0x01 and not any(p.flags & 0x01 for p in pdus[:-1])  # status collapsed
    assert b"".join(bytes(p.data) for p in pdus) == bytes(range(256)) * 16


def test_read_underflow_and_overflow_residuals() -> None:
    w = logged_in()
    w.command(READ10, read=512)
    (ev,) = w.executes()
    (pdu,) = w.complete(ev, ScsiResult(Status.GOOD, bytes(100)))
    assert pdu.flags & 0x02 and pdu.w44 == 412  # underflow
    w.command(READ10, read=512)
    (ev,) = w.executes()
    (pdu,) = w.complete(ev, ScsiResult(Status.GOOD, bytes(600)))
    assert pdu.flags & 0x04 and pdu.w44 == 88 and len(pdu.data) == 512  # overflow, truncated


def test_check_condition_sends_data_then_response_with_sense() -> None:
    w = logged_in()
    w.command(READ10, read=512)
    (ev,) = w.executes()
    (resp,) = w.complete(ev, ScsiResult(Status.CHECK_CONDITION, None, SENSE))
    assert resp.opcode == Opcode.SCSI_RESPONSE and resp.b3 == Status.CHECK_CONDITION
    assert bytes(resp.data) == len(SENSE).to_bytes(2, "big") + SENSE


def test_write_with_immediate_unsolicited_and_solicited_data() -> None:
    w = logged_in()
    payload = bytes(i % 251 for i in range(5000))
    itt, out = w.command(WRITE10, write=payload, immediate=payload[:512], final=False)
    assert out == []
    # unsolicited Data-Out completes the first burst (1024 bytes)
    out = w.send(PDU(Opcode.DATA_OUT, flags=0x80, lun=encode_lun(0), itt=itt, w20=0xFFFFFFFF, w36=0, w40=512,
                     data=payload[512:1024]))
    r2ts = [p for p in out if p.opcode == Opcode.R2T]
    assert [(p.w40, p.w44) for p in r2ts] == [(1024, 2048), (3072, 1928)]  # MaxOutstandingR2T=2
    assert [p.w36 for p in r2ts] == [0, 1]
    for r2t in r2ts:
        pos, sn = r2t.w40, 0
        while pos < r2t.w40 + r2t.w44:
            n = min(1024, r2t.w40 + r2t.w44 - pos)
            w.send(PDU(Opcode.DATA_OUT, flags=0x80 if pos + n == r2t.w40 + r2t.w44 else 0, itt=itt,
                       w20=r2t.w20, w36=sn, w40=pos, data=payload[pos : pos + n]))
            pos += n
            sn += 1
    (ev,) = w.executes()
    assert bytes(ev.task.data_out()) == payload
    (resp,) = w.complete(ev, ScsiResult(Status.GOOD))
    assert resp.opcode == Opcode.SCSI_RESPONSE and resp.b3 == 0 and resp.w36 == 2  # ExpDataSN = R2Ts


def test_wrong_datasn_fails_the_task_but_keeps_the_connection() -> None:
    w = logged_in(InitialR2T="Yes")
    w.conn.params.initial_r2t = True
    itt, out = w.command(WRITE10, write=bytes(2048), immediate=b"")
    (r2t,) = [p for p in out if p.opcode == Opcode.R2T]
    w.send(PDU(Opcode.DATA_OUT, flags=0, itt=itt, w20=r2t.w20, w36=0, w40=0, data=bytes(1024)))
    (resp,) = w.send(PDU(Opcode.DATA_OUT, flags=0x80, itt=itt, w20=r2t.w20, w36=0, w40=1024, data=bytes(1024)))
    assert resp.opcode == Opcode.SCSI_RESPONSE and resp.b3 == Status.CHECK_CONDITION
    sense = bytes(resp.data)[2:]
    assert (sense[2], sense[12], sense[13]) == (0x0B, 0x4B, 0x00)  # ABORTED COMMAND, DATA PHASE ERROR
    assert not any(isinstance(e, CloseConnection) for e in w.events)
    assert w.executes() == []
    # a late Data-Out for the failed task is ignored, and the session still works
    assert w.send(PDU(Opcode.DATA_OUT, flags=0x80, itt=itt, w20=r2t.w20, w36=2, w40=0, data=bytes(512))) == []
    w.command(READ10, read=512)
    assert len(w.executes()) == 1


def test_read_with_zero_edtl_reports_overflow_of_all_data() -> None:
    w = logged_in()
    w.command(READ10, read=0)
    (ev,) = w.executes()
    (resp,) = w.complete(ev, ScsiResult(Status.GOOD, bytes(512)))
    assert resp.opcode == Opcode.SCSI_RESPONSE and resp.flags & 0x04 and resp.w44 == 512


def test_cmdsn_outside_window_is_silently_ignored() -> None:
    w = logged_in()
    max_cmdsn = w.conn.max_cmdsn
    _, out = w.command(READ10, read=512, cmdsn=(max_cmdsn + 1) & 0xFFFFFFFF)
    assert out == [] and w.executes() == []
    _, out = w.command(READ10, read=512, cmdsn=0)  # too low (ExpCmdSN is 1)
    assert w.executes() == []
    w.cmdsn = 1
    w.command(READ10, read=512)
    assert len(w.executes()) == 1


def test_out_of_order_cmdsn_waits_for_the_gap() -> None:
    w = logged_in()
    w.command(READ10, read=512, cmdsn=2)
    assert w.executes() == []
    w.command(READ10, read=512, cmdsn=1)
    assert [e.task.cmdsn for e in w.executes()] == [1, 2]


def test_nop_out_is_echoed_and_idle_link_gets_pinged_then_dropped() -> None:
    w = Wire(make_portal(), nop_interval=5.0, nop_timeout=3.0)
    w.login()
    (resp,) = w.send(PDU(Opcode.NOP_OUT, flags=0x80, itt=5, w20=0xFFFFFFFF, w24=1, data=b"ping"))
    assert resp.opcode == Opcode.NOP_IN and resp.itt == 5 and bytes(resp.data) == b"ping"
    w.events += w.conn.tick(10.0)
    (ping,) = w.collect()
    assert ping.opcode == Opcode.NOP_IN and ping.itt == 0xFFFFFFFF and ping.w20 != 0xFFFFFFFF
    w.events += w.conn.tick(14.0)
    assert any(isinstance(e, CloseConnection) for e in w.events)


def test_abort_task_of_running_command_answers_after_it_finishes() -> None:
    w = logged_in()
    itt, _ = w.command(READ10, read=512)
    (ev,) = w.executes()
    out = w.send(PDU(Opcode.TASK_MGMT_REQUEST, flags=0x80 | TMF.ABORT_TASK, immediate=True,
                     lun=encode_lun(0), itt=900, w20=itt, w24=w.cmdsn))
    assert out == []
    out = w.complete(ev, ScsiResult(Status.GOOD, bytes(512)))
    assert [p.opcode for p in out] == [Opcode.TASK_MGMT_RESPONSE]  # no data for the aborted task
    assert out[0].b2 == 0


def test_abort_unknown_task_says_task_does_not_exist() -> None:
    w = logged_in()
    (resp,) = w.send(PDU(Opcode.TASK_MGMT_REQUEST, flags=0x80 | TMF.ABORT_TASK, immediate=True,
                         lun=encode_lun(0), itt=900, w20=12345, w24=w.cmdsn))
    assert resp.b2 == 1


def test_lun_reset_reports_reset_event_and_absent_lun_is_refused() -> None:
    w = logged_in()
    (resp,) = w.send(PDU(Opcode.TASK_MGMT_REQUEST, flags=0x80 | TMF.LOGICAL_UNIT_RESET, immediate=True,
                         lun=encode_lun(1), itt=900, w24=w.cmdsn))
    assert resp.b2 == 0
    assert any(isinstance(e, ResetRequested) and e.lun == 1 for e in w.events)
    (resp,) = w.send(PDU(Opcode.TASK_MGMT_REQUEST, flags=0x80 | TMF.LOGICAL_UNIT_RESET, immediate=True,
                         lun=encode_lun(7), itt=901, w24=w.cmdsn))
    assert resp.b2 == 2


def test_logout_waits_for_running_commands() -> None:
    w = logged_in()
    w.command(READ10, read=512)
    (ev,) = w.executes()
    out = w.send(PDU(Opcode.LOGOUT_REQUEST, flags=0x80, immediate=True, itt=77, w24=w.cmdsn))
    assert out == []
    out = w.complete(ev, ScsiResult(Status.GOOD, bytes(512)))
    assert [p.opcode for p in out] == [Opcode.DATA_IN, Opcode.LOGOUT_RESPONSE]
    assert any(isinstance(e, CloseConnection) and e.clean for e in w.events)


def test_snack_and_unknown_opcodes_are_rejected_with_the_header() -> None:
    w = logged_in()
    snack = PDU(Opcode.SNACK_REQUEST, flags=0x80, itt=3)
    (rej,) = w.send(snack)
    assert rej.opcode == Opcode.REJECT and rej.b2 == 0x05 and bytes(rej.data)[:1] == bytes([0x10])
    (rej,) = w.send(PDU(0x1C, flags=0x80, itt=4))
    assert rej.opcode == Opcode.REJECT


def test_data_digest_error_gets_reject() -> None:
    w = Wire(make_portal())
    w.login([("DataDigest", "CRC32C")])
    from storaged.iscsi.pdu import encode_bytes

    raw = bytearray(encode_bytes(PDU(Opcode.NOP_OUT, flags=0x80, itt=5, w20=0xFFFFFFFF, w24=1, data=b"abcd"),
                                 False, True))
    raw[-1] ^= 0xFF
    (rej,) = w.send_bytes(bytes(raw))
    assert rej.opcode == Opcode.REJECT and rej.b2 == 0x02


def test_statsn_increments_across_responses() -> None:
    w = logged_in()
    sns = []
    for _ in range(3):
        w.command(READ10, read=0)
        (ev,) = w.executes()
        (resp,) = w.complete(ev, ScsiResult(Status.GOOD))
        sns.append(resp.w24)
    assert sns[1] == sns[0] + 1 and sns[2] == sns[1] + 1

"""Bounded resources per session and per array: the CmdSN window, write-buffer grants, task slots.

A session can never have more commands than its window; write buffers follow the data that
arrived, not the Expected Data Transfer Length a command claims; shortages answer TASK SET FULL
or BUSY as SAM-5 says.
"""

from __future__ import annotations

import tracemalloc

from storaged.iscsi.budget import Budget
from storaged.iscsi.pdu import PDU, Opcode, encode_lun
from storaged.scsi.types import ScsiResult, Status

from .helpers import Wire, make_portal

READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])
WRITE16 = bytes([0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0])  # 131072 blocks: 64 MiB
MiB = 1 << 20
MASK = 0xFFFFFFFF


def wire(queue_depth: int = 4, **kw: object) -> Wire:
    w = Wire(make_portal(), queue_depth=queue_depth, **kw)
    w.login([("MaxBurstLength", "262144"), ("FirstBurstLength", "65536"), ("InitialR2T", "No"),
             ("MaxOutstandingR2T", "1")])
    return w


def r2t_itts(pdus: list[PDU]) -> set[int]:
    return {p.itt for p in pdus if p.opcode == Opcode.R2T}


def test_window_closes_when_the_queue_is_full_and_reopens_as_tasks_finish() -> None:
    w = wire(queue_depth=4)
    for _ in range(6):
        w.command(READ10, read=512)
    running = w.executes()
    assert len(running) == 4 and len(w.conn.tasks) == 4  # commands 5 and 6 were beyond the window
    assert w.conn.max_cmdsn == (w.conn.exp_cmdsn - 1) & MASK  # closed (RFC 7143 s.4.2.2.1)
    (resp,) = w.complete(running[0], ScsiResult(Status.GOOD, bytes(512)))
    assert resp.w32 == w.conn.exp_cmdsn  # MaxCmdSN = ExpCmdSN: one slot open again
    w.cmdsn = 5
    w.command(READ10, read=512)
    assert len(w.executes()) == 1 and len(w.conn.tasks) == 4


def test_writes_beyond_the_window_get_no_r2t() -> None:
    w = wire(queue_depth=8)
    out = []
    for _ in range(16):
        _, pdus = w.command(WRITE16, edtl=MiB)
        out += pdus
    assert len(r2t_itts(out)) <= 8 and len(w.conn.tasks) <= 8


def test_write_buffers_grow_with_the_data_not_with_the_claimed_length() -> None:
    w = wire(queue_depth=16)
    tracemalloc.start()
    try:
        for _ in range(16):
            w.command(WRITE16, edtl=64 * MiB)  # a 48-byte PDU each, no data will follow
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(w.conn.tasks) == 16
    assert peak < 4 * MiB


def _send_solicited(w: Wire, r2t: PDU, payload: bytes) -> list[PDU]:
    out = []
    pos, sn = r2t.w40, 0
    end = r2t.w40 + r2t.w44
    while pos < end:
        n = min(65536, end - pos)
        out += w.send(PDU(Opcode.DATA_OUT, flags=0x80 if pos + n == end else 0, lun=encode_lun(0), itt=r2t.itt,
                          w20=r2t.w20, w36=sn, w40=pos, data=payload[pos : pos + n]))
        pos += n
        sn += 1
    return out


def test_r2ts_are_paced_by_the_session_write_budget() -> None:
    w = wire(queue_depth=8, session_write_budget=2 * MiB)
    out = []
    itts = []
    for _ in range(4):
        itt, pdus = w.command(WRITE16, edtl=MiB)
        itts.append(itt)
        out += pdus
    assert r2t_itts(out) == set(itts[:2])  # two 1 MiB writes fill the 2 MiB budget
    payload = bytes(range(256)) * 4096
    # finish the first write: its R2Ts one by one (MaxOutstandingR2T=1)
    pending = [p for p in out if p.opcode == Opcode.R2T and p.itt == itts[0]]
    while pending:
        more = _send_solicited(w, pending.pop(), payload)
        pending += [p for p in more if p.opcode == Opcode.R2T and p.itt == itts[0]]
    (ev,) = w.executes()
    assert bytes(ev.task.data_out()) == payload
    out = w.complete(ev, ScsiResult(Status.GOOD))
    assert itts[2] in r2t_itts(out) and itts[3] not in r2t_itts(out)  # the freed MiB goes to the next


def test_unsolicited_write_that_does_not_fit_gets_task_set_full_or_busy() -> None:
    array = Budget(1 * MiB, 100)
    a = wire(queue_depth=8, array_budget=array)
    b = wire(queue_depth=8, array_budget=array)
    a.command(WRITE16, edtl=MiB)  # holds the whole array allowance, waiting for its data
    b.command(READ10, read=512)
    # b has a command in its task set: TASK SET FULL; a fresh session c has none: BUSY
    _, out = b.command(WRITE16, edtl=4096, immediate=bytes(4096))
    assert [(p.opcode, p.b3) for p in out] == [(Opcode.SCSI_RESPONSE, Status.TASK_SET_FULL)]
    c = wire(queue_depth=8, array_budget=array)
    _, out = c.command(WRITE16, edtl=4096, immediate=bytes(4096))
    assert [(p.opcode, p.b3) for p in out] == [(Opcode.SCSI_RESPONSE, Status.BUSY)]


def test_waiting_write_gets_its_r2t_when_another_session_frees_the_array_budget() -> None:
    array = Budget(1 * MiB, 100)
    woken: list[int] = []
    a = wire(queue_depth=8, array_budget=array)
    b = wire(queue_depth=8, array_budget=array)
    b.conn.wake = lambda: woken.append(1)
    itt_a, out = a.command(WRITE16, edtl=MiB)
    assert r2t_itts(out) == {itt_a}
    itt_b, out = b.command(WRITE16, edtl=MiB)
    assert out == []
    # a's session goes away: its grant returns to the array and b is told to retry
    a.conn.abort_tasks(None)
    assert woken
    b.events += b.conn.resume()
    assert r2t_itts(b.collect()) == {itt_b}


def test_immediate_commands_beyond_the_queue_depth_get_task_set_full() -> None:
    w = wire(queue_depth=2)
    w.command(READ10, read=512)
    w.command(READ10, read=512)
    assert len(w.executes()) == 2
    w.itt += 1
    (resp,) = w.send(PDU(Opcode.SCSI_COMMAND, flags=0xC1, immediate=True, lun=encode_lun(0), itt=w.itt,
                         w20=512, w24=w.cmdsn, w32=0x28000000))
    assert resp.opcode == Opcode.SCSI_RESPONSE and resp.b3 == Status.TASK_SET_FULL
    assert len(w.conn.tasks) == 2


def test_array_task_slots_are_shared_between_sessions() -> None:
    array = Budget(64 * MiB, 3)
    a = wire(queue_depth=8, array_budget=array)
    b = wire(queue_depth=8, array_budget=array)
    for _ in range(3):
        a.command(READ10, read=512)
    assert len(a.executes()) == 3
    _, out = b.command(READ10, read=512)
    assert [(p.opcode, p.b3) for p in out] == [(Opcode.SCSI_RESPONSE, Status.BUSY)]
    assert b.executes() == []


def test_login_response_announces_the_window_the_session_has() -> None:
    w = Wire(make_portal(), queue_depth=4)
    keys = [("InitiatorName", "iqn.2026-11.test:host1"), ("TargetName", "iqn.2026-11.test:t1"),
            ("AuthMethod", "None")]
    from .helpers import login_pdu

    w.send(login_pdu(keys, 0, 1))
    (final,) = w.send(login_pdu([], 1, 3))
    assert final.w32 == (final.w28 + 3) & MASK  # MaxCmdSN = ExpCmdSN + queue_depth - 1


def test_a_link_that_holds_a_grant_without_sending_data_is_dropped() -> None:
    from storaged.iscsi.connection import CloseConnection
    from storaged.iscsi.pdu import encode_bytes

    array = Budget(1 * MiB, 100)
    w = wire(queue_depth=8, array_budget=array, r2t_timeout=30.0, nop_interval=0)
    itt, out = w.command(WRITE16, edtl=MiB)
    (r2t,) = [p for p in out if p.opcode == Opcode.R2T]
    # data trickles in at t=20: the write is alive
    w.events += w.conn.receive_data(encode_bytes(PDU(Opcode.DATA_OUT, flags=0, lun=encode_lun(0), itt=itt,
                                                     w20=r2t.w20, w36=0, w40=r2t.w40, data=bytes(4096))), 20.0)
    w.events += w.conn.tick(45.0)
    assert not any(isinstance(e, CloseConnection) for e in w.events)
    w.events += w.conn.tick(51.0)
    assert any(isinstance(e, CloseConnection) and "no Data-Out" in e.reason for e in w.events)
    w.conn.abort_tasks(None)  # what the transport does when the socket is gone
    assert array.bytes_used == 0 and array.tasks_used == 0

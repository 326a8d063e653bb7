"""A small asyncio iSCSI initiator built on the same PDU codec as the target.

Used by hostctl (to reach command devices over ``iscsi://`` URLs), by the remote link's tests and
by the project's own tests where a real initiator lacks a feature (CHAP SHA-256, malformed PDUs).
It supports one connection per session, immediate/unsolicited data and R2Ts, digests and CHAP.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import struct
from dataclasses import dataclass, field

from .chap import ChapCredentials, ChapError, ChapInitiator
from .pdu import (
    PDU,
    RESERVED_TAG,
    Opcode,
    PDUReader,
    encode_bytes,
    encode_lun,
    format_text,
    parse_text,
)

DEFAULT_INITIATOR = "iqn.2026-11.io.storaged:initiator"


class InitiatorError(Exception):
    """The session could not be used: refused login, dropped connection, protocol error."""


class LoginRefused(InitiatorError):
    def __init__(self, status: int, keys: dict[str, str]) -> None:
        super().__init__(f"login refused with status {status >> 8:02x}/{status & 0xFF:02x}")
        self.status = status
        self.keys = keys


@dataclass(slots=True)
class ScsiReply:
    status: int
    data: bytes = b""
    sense: bytes = b""
    residual_flags: int = 0
    residual: int = 0

    @property
    def sense_key(self) -> int:
        if not self.sense:
            return 0
        return self.sense[1] & 0x0F if self.sense[0] & 0x7F in (0x72, 0x73) else self.sense[2] & 0x0F

    @property
    def asc_ascq(self) -> tuple[int, int]:
        if not self.sense:
            return (0, 0)
        if self.sense[0] & 0x7F in (0x72, 0x73):
            return (self.sense[2], self.sense[3])
        return (self.sense[12], self.sense[13])


_URL = re.compile(r"^iscsi://(?:(?P<user>[^:@/]*)(?::(?P<secret>[^@/]*))?@)?(?P<host>\[[^\]]+\]|[^:/]+)"
                  r"(?::(?P<port>\d+))?/(?P<target>[^/]+)/(?P<lun>\d+)$")


@dataclass(frozen=True, slots=True)
class IscsiUrl:
    host: str
    port: int
    target: str
    lun: int
    chap: ChapCredentials | None = None

    @classmethod
    def parse(cls, url: str) -> IscsiUrl:
        m = _URL.match(url)
        if not m:
            raise ValueError(f"{url!r} is not iscsi://[user[:secret]@]host[:port]/target-iqn/lun")
        chap = None
        if m.group("user"):
            chap = ChapCredentials(m.group("user"), m.group("secret") or "")
        return cls(m.group("host").strip("[]"), int(m.group("port") or 3260), m.group("target"),
                   int(m.group("lun")), chap)


@dataclass
class _Pending:
    future: asyncio.Future[ScsiReply | PDU]
    data_out: bytes = b""
    data_in: bytearray = field(default_factory=bytearray)
    is_scsi: bool = True


class IscsiSession:
    """One logged-in session to one target (or a discovery session)."""

    def __init__(self) -> None:
        self.reader_pdu = PDUReader()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._itt = itertools.count(1)
        self.cmdsn = 1
        self.exp_statsn = 0
        self.max_cmdsn = 1
        self.params: dict[str, str] = {}
        self._pending: dict[int, _Pending] = {}
        self._rx_task: asyncio.Task[None] | None = None
        self._closed_exc: BaseException | None = None
        self._lock = asyncio.Lock()
        self.header_digest = False
        self.data_digest = False
        self.target_mrdsl = 8192
        self.first_burst = 65536
        self.immediate_data = True
        self.initial_r2t = True
        self.tsih = 0

    # --- connection and login --------------------------------------------------------------

    async def login(self, host: str, port: int, target: str | None, *,
                    initiator: str = DEFAULT_INITIATOR, isid: bytes | None = None,
                    chap: ChapCredentials | None = None, chap_algorithms: tuple[int, ...] = (5,),
                    digests: bool = False, timeout: float = 10.0,
                    extra_keys: list[tuple[str, str]] | None = None) -> dict[str, str]:
        """Connect and log in; return the keys the target answered with."""
        self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        isid = isid or bytes([0x80]) + os.urandom(5)
        itt = next(self._itt)
        keys = [("InitiatorName", initiator),
                ("SessionType", "Discovery" if target is None else "Normal")]
        if target is not None:
            keys.append(("TargetName", target))
        answered: dict[str, str] = {}
        csg = 0
        chap_i: ChapInitiator | None = None
        if chap is not None:
            keys.append(("AuthMethod", "CHAP,None"))
            chap_i = ChapInitiator(chap, chap_algorithms)
        else:
            keys.append(("AuthMethod", "None"))
        operational = [
            ("HeaderDigest", "CRC32C,None" if digests else "None"),
            ("DataDigest", "CRC32C,None" if digests else "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]
        if target is not None:
            operational += [("InitialR2T", "No"), ("ImmediateData", "Yes"), ("MaxBurstLength", "16776192"),
                            ("FirstBurstLength", "262144"), ("MaxOutstandingR2T", "1"),
                            ("ErrorRecoveryLevel", "0"), ("MaxConnections", "1")]
        operational += extra_keys or []
        stage_keys = keys
        chap_step = 0
        while True:
            if csg == 0:
                transit = chap_i is None or chap_step == 2
                flags = (0x80 if transit else 0) | (0 << 2) | (1 if transit else 0)
            else:
                flags = 0x80 | (1 << 2) | 3
            pdu = PDU(Opcode.LOGIN_REQUEST, flags=flags, immediate=True, b2=0, b3=0,
                      lun=isid + bytes(2), itt=itt, w20=0, w24=self.cmdsn, w28=self.exp_statsn,
                      data=format_text(stage_keys))
            resp = await asyncio.wait_for(self._exchange_login(pdu), timeout)
            rkeys = dict(parse_text(resp.data))
            answered.update(rkeys)
            status = (resp.w36 >> 24) << 8 | ((resp.w36 >> 16) & 0xFF)
            if status:
                await self.close()
                raise LoginRefused(status, rkeys)
            self.exp_statsn = (resp.w24 + 1) & 0xFFFFFFFF
            self.max_cmdsn = resp.w32
            r_transit = bool(resp.flags & 0x80)
            r_nsg = resp.flags & 3
            if csg == 0:
                if chap_i is not None and chap_step == 0:
                    if rkeys.get("AuthMethod") == "CHAP":
                        stage_keys = chap_i.first_keys()
                        chap_step = 1
                        continue
                    chap_i = None  # target chose None
                elif chap_i is not None and chap_step == 1:
                    try:
                        stage_keys = chap_i.answer(rkeys)
                    except ChapError as exc:
                        await self.close()
                        raise InitiatorError(str(exc)) from None
                    chap_step = 2
                    continue
                elif chap_i is not None and chap_step == 2:
                    try:
                        chap_i.check_target(rkeys)
                    except ChapError as exc:
                        await self.close()
                        raise InitiatorError(str(exc)) from None
                if r_transit and r_nsg == 1:
                    csg = 1
                    stage_keys = operational
                    continue
                if not r_transit:
                    stage_keys = []
                    continue
            if csg == 1 and r_transit and r_nsg == 3:
                self.tsih = int.from_bytes(resp.lun[6:8], "big")
                break
            stage_keys = []
        self.params = answered
        self.header_digest = answered.get("HeaderDigest") == "CRC32C"
        self.data_digest = answered.get("DataDigest") == "CRC32C"
        self.target_mrdsl = int(answered.get("MaxRecvDataSegmentLength", "8192"))
        self.first_burst = int(answered.get("FirstBurstLength", "65536"))
        self.immediate_data = answered.get("ImmediateData", "Yes") == "Yes"
        self.initial_r2t = answered.get("InitialR2T", "Yes") == "Yes"
        self.reader_pdu.header_digest = self.header_digest
        self.reader_pdu.data_digest = self.data_digest
        self._rx_task = asyncio.create_task(self._rx_loop())
        return answered

    async def _exchange_login(self, pdu: PDU) -> PDU:
        self.send_raw(encode_bytes(pdu))
        while True:
            got = self.reader_pdu.next_pdu()
            if got is not None:
                if got.opcode != Opcode.LOGIN_RESPONSE:
                    raise InitiatorError(f"unexpected opcode {got.opcode:#x} during login")
                return got
            assert self._reader is not None
            chunk = await self._reader.read(65536)
            if not chunk:
                raise InitiatorError("connection closed during login")
            self.reader_pdu.feed(chunk)

    def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def send_pdu(self, pdu: PDU) -> None:
        self.send_raw(encode_bytes(pdu, self.header_digest, self.data_digest))

    async def close(self) -> None:
        if self._rx_task is not None:
            self._rx_task.cancel()
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    # --- full feature phase ----------------------------------------------------------------

    async def _rx_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                pdu = self.reader_pdu.next_pdu()
                if pdu is None:
                    chunk = await self._reader.read(1 << 20)
                    if not chunk:
                        raise InitiatorError("target closed the connection")
                    self.reader_pdu.feed(chunk)
                    continue
                self._on_pdu(pdu)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter learns why the session died
            self._closed_exc = exc if isinstance(exc, InitiatorError) else InitiatorError(str(exc))
            for p in self._pending.values():
                if not p.future.done():
                    p.future.set_exception(self._closed_exc)
            self._pending.clear()

    def _track_sn(self, pdu: PDU) -> None:
        if pdu.opcode in (Opcode.SCSI_RESPONSE, Opcode.TASK_MGMT_RESPONSE, Opcode.TEXT_RESPONSE,
                          Opcode.LOGOUT_RESPONSE, Opcode.REJECT) or (
                pdu.opcode == Opcode.DATA_IN and pdu.flags & 0x01) or (
                pdu.opcode == Opcode.NOP_IN and pdu.itt != RESERVED_TAG):
            self.exp_statsn = (pdu.w24 + 1) & 0xFFFFFFFF
        if pdu.opcode != Opcode.DATA_OUT:
            self.max_cmdsn = pdu.w32

    def _on_pdu(self, pdu: PDU) -> None:
        self._track_sn(pdu)
        op = pdu.opcode
        if op == Opcode.NOP_IN and pdu.itt == RESERVED_TAG:
            # A target ping: answer it (immediate NOP-Out echoing the TTT).
            self.send_pdu(PDU(Opcode.NOP_OUT, flags=0x80, immediate=True, lun=pdu.lun, itt=RESERVED_TAG,
                              w20=pdu.w20, w24=self.cmdsn, w28=self.exp_statsn))
            return
        pending = self._pending.get(pdu.itt)
        if pending is None:
            return
        if op == Opcode.DATA_IN:
            pending.data_in[pdu.w40 : pdu.w40 + len(pdu.data)] = pdu.data
            if pdu.flags & 0x01:
                del self._pending[pdu.itt]
                pending.future.set_result(ScsiReply(pdu.b3, bytes(pending.data_in), b"",
                                                    pdu.flags & 0x06, pdu.w44))
        elif op == Opcode.R2T:
            self._answer_r2t(pdu, pending)
        elif op == Opcode.SCSI_RESPONSE:
            del self._pending[pdu.itt]
            sense = b""
            if len(pdu.data) >= 2:
                n = int.from_bytes(pdu.data[:2], "big")
                sense = bytes(pdu.data[2 : 2 + n])
            pending.future.set_result(ScsiReply(pdu.b3, bytes(pending.data_in), sense, pdu.flags & 0x06,
                                                pdu.w44))
        else:
            del self._pending[pdu.itt]
            pending.future.set_result(pdu)

    def _answer_r2t(self, r2t: PDU, pending: _Pending) -> None:
        offset, length = r2t.w40, r2t.w44
        datasn = 0
        pos = offset
        end = offset + length
        while pos < end:
            n = min(self.target_mrdsl, end - pos)
            self.send_pdu(PDU(Opcode.DATA_OUT, flags=0x80 if pos + n >= end else 0, lun=r2t.lun,
                              itt=r2t.itt, w20=r2t.w20, w28=self.exp_statsn, w36=datasn, w40=pos,
                              data=pending.data_out[pos : pos + n]))
            datasn += 1
            pos += n

    def _next_cmdsn(self) -> int:
        sn = self.cmdsn
        self.cmdsn = (sn + 1) & 0xFFFFFFFF
        return sn

    async def _wait_window(self) -> None:
        while ((self.max_cmdsn - self.cmdsn) & 0xFFFFFFFF) >= 0x80000000:
            await asyncio.sleep(0.001)

    async def scsi(self, lun: int, cdb: bytes, data_out: bytes = b"", read_length: int = 0,
                   timeout: float | None = 30.0, retry_unit_attention: bool = True) -> ScsiReply:
        """Run one SCSI command; data_out for writes, read_length for reads.

        A UNIT ATTENTION (power on, reset, parameters changed) only reports an event, so like the
        kernel's SCSI midlayer the command is retried a few times unless told otherwise.
        """
        for _ in range(4):
            reply = await self._scsi_once(lun, cdb, data_out, read_length, timeout)
            if not (retry_unit_attention and reply.status == 2 and reply.sense_key == 6):
                break
        return reply

    async def _scsi_once(self, lun: int, cdb: bytes, data_out: bytes, read_length: int,
                         timeout: float | None) -> ScsiReply:
        if self._closed_exc is not None:
            raise self._closed_exc
        await self._wait_window()
        itt = next(self._itt) & 0xFFFFFFFF
        cdb16 = cdb.ljust(16, b"\0")
        ahs = b""
        if len(cdb) > 16:
            ext = cdb[16:]
            ahs_len = len(ext) + 1
            ahs = ahs_len.to_bytes(2, "big") + bytes([1, 0]) + ext + bytes(-(len(ext) + 4) % 4)
            cdb16 = cdb[:16]
        edtl = len(data_out) if data_out else read_length
        immediate = b""
        unsolicited_done = True
        if data_out:
            if self.immediate_data:
                immediate = data_out[: min(self.first_burst, self.target_mrdsl)]
            unsolicited_limit = 0 if self.initial_r2t else min(self.first_burst, len(data_out))
            unsolicited_done = len(immediate) >= unsolicited_limit
        flags = (0x80 if unsolicited_done else 0) | (0x40 if read_length else 0) | (0x20 if data_out else 0) | 1
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), data_out)
        self._pending[itt] = pending
        lun_field = encode_lun(lun)
        w32, w36, w40, w44 = struct.unpack(">IIII", cdb16)
        self.send_pdu(PDU(Opcode.SCSI_COMMAND, flags=flags, lun=lun_field, itt=itt, w20=edtl,
                          w24=self._next_cmdsn(), w28=self.exp_statsn, w32=w32, w36=w36, w40=w40, w44=w44,
                          ahs=ahs, data=immediate))
        if not unsolicited_done:
            pos = len(immediate)
            end = min(self.first_burst, len(data_out))
            datasn = 0
            while pos < end:
                n = min(self.target_mrdsl, end - pos)
                self.send_pdu(PDU(Opcode.DATA_OUT, flags=0x80 if pos + n >= end else 0, lun=lun_field, itt=itt,
                                  w20=RESERVED_TAG, w28=self.exp_statsn, w36=datasn, w40=pos,
                                  data=data_out[pos : pos + n]))
                datasn += 1
                pos += n
        result = await asyncio.wait_for(pending.future, timeout)
        assert isinstance(result, ScsiReply)
        return result

    async def _request(self, pdu: PDU, timeout: float = 30.0) -> PDU:
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), is_scsi=False)
        self._pending[pdu.itt] = pending
        self.send_pdu(pdu)
        result = await asyncio.wait_for(pending.future, timeout)
        assert isinstance(result, PDU)
        return result

    async def text(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        itt = next(self._itt)
        body = b""
        ttt = RESERVED_TAG
        data = format_text(pairs)
        while True:
            resp = await self._request(PDU(Opcode.TEXT_REQUEST, flags=0x80, immediate=False, itt=itt, w20=ttt,
                                           w24=self._next_cmdsn(), w28=self.exp_statsn, data=data))
            body += bytes(resp.data)
            if not (resp.flags & 0x40):
                break
            ttt, data = resp.w20, b""
            itt = next(self._itt)
        return parse_text(body)

    async def nop(self, payload: bytes = b"") -> bytes:
        itt = next(self._itt)
        resp = await self._request(PDU(Opcode.NOP_OUT, flags=0x80, itt=itt, w20=RESERVED_TAG,
                                       w24=self._next_cmdsn(), w28=self.exp_statsn, data=payload))
        return bytes(resp.data)

    async def task_management(self, function: int, lun: int = 0, ref_itt: int = RESERVED_TAG) -> int:
        itt = next(self._itt)
        resp = await self._request(PDU(Opcode.TASK_MGMT_REQUEST, flags=0x80 | function, immediate=True,
                                       lun=encode_lun(lun), itt=itt, w20=ref_itt, w24=self.cmdsn,
                                       w28=self.exp_statsn, w32=self.cmdsn))
        return resp.b2

    async def logout(self, timeout: float = 10.0) -> int:
        itt = next(self._itt)
        try:
            resp = await self._request(PDU(Opcode.LOGOUT_REQUEST, flags=0x80, immediate=True, itt=itt,
                                           w24=self.cmdsn, w28=self.exp_statsn), timeout)
            return resp.b2
        finally:
            await self.close()

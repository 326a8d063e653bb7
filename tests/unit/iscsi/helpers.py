"""In-memory initiator side for driving the sans-IO target connection without sockets."""

from __future__ import annotations

import struct

from storaged.iscsi.chap import ChapCredentials
from storaged.iscsi.connection import ExecuteCommand, TargetConnection
from storaged.iscsi.pdu import PDU, Opcode, PDUReader, encode_bytes, encode_lun, format_text, parse_text
from storaged.iscsi.portal import Portal, TargetInfo
from storaged.scsi.types import ScsiResult

TARGET = "iqn.2026-11.test:t1"
INITIATOR = "iqn.2026-11.test:host1"
ISID = bytes([0x80, 1, 2, 3, 4, 5])


def make_portal(chap: ChapCredentials | None = None, allowed: frozenset[str] | None = None,
                **operational: str) -> Portal:
    ops = {"MaxRecvDataSegmentLength": "262144", "InitialR2T": "No", "ImmediateData": "Yes",
           "MaxBurstLength": "16776192", "FirstBurstLength": "262144", "MaxOutstandingR2T": "4",
           "HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}
    ops.update(operational)
    return Portal(targets={TARGET: TargetInfo(TARGET, allowed_initiators=allowed, chap=chap,
                                              luns=frozenset({0, 1}))},
                  addresses=["127.0.0.1:3260"], operational=ops)


def login_pdu(keys: list[tuple[str, str]], csg: int, nsg: int, transit: bool = True, itt: int = 1,
              cmdsn: int = 1, isid: bytes = ISID, tsih: int = 0) -> PDU:
    flags = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
    return PDU(Opcode.LOGIN_REQUEST, flags=flags, immediate=True, lun=isid + tsih.to_bytes(2, "big"),
               itt=itt, w24=cmdsn, data=format_text(keys))


class Wire:
    """A target connection plus an initiator-side PDU reader, both in memory."""

    def __init__(self, portal: Portal | None = None, **kw: object) -> None:
        self.conn = TargetConnection(portal or make_portal(), 0.0, **kw)  # type: ignore[arg-type]
        self.reader = PDUReader()
        self.events: list[object] = []
        self.cmdsn = 1
        self.itt = 100

    def send(self, pdu: PDU, hd: bool = False, dd: bool = False) -> list[PDU]:
        return self.send_bytes(encode_bytes(pdu, hd, dd))

    def send_bytes(self, data: bytes) -> list[PDU]:
        self.events += self.conn.receive_data(data)
        return self.collect()

    def collect(self) -> list[PDU]:
        for chunk in self.conn.data_to_send():
            self.reader.feed(chunk)
        out = []
        while (p := self.reader.next_pdu()) is not None:
            out.append(p)
        return out

    def login(self, extra: list[tuple[str, str]] | None = None) -> dict[str, str]:
        keys = [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("SessionType", "Normal"),
                ("AuthMethod", "None")]
        (resp,) = self.send(login_pdu(keys, 0, 1))
        assert resp.w36 == 0, hex(resp.w36)
        (resp,) = self.send(login_pdu(extra or [], 1, 3))
        assert resp.w36 == 0 and resp.flags & 0x83 == 0x83
        got = dict(parse_text(resp.data))
        self.reader.header_digest = got.get("HeaderDigest") == "CRC32C"
        self.reader.data_digest = got.get("DataDigest") == "CRC32C"
        self.cmdsn = 1
        return got

    def command(self, cdb: bytes, *, read: int = 0, write: bytes = b"", immediate: bytes | None = None,
                final: bool = True, lun: int = 0, cmdsn: int | None = None, itt: int | None = None,
                edtl: int | None = None) -> tuple[int, list[PDU]]:
        self.itt += 1
        itt = self.itt if itt is None else itt
        sn = self.cmdsn if cmdsn is None else cmdsn
        if cmdsn is None:
            self.cmdsn += 1
        cdb16 = cdb.ljust(16, b"\0")
        w = struct.unpack(">IIII", cdb16)
        is_write = bool(write) or (edtl is not None and not read)  # edtl alone: a write whose data follows
        flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if is_write else 0) | 1
        data = write if immediate is None else immediate
        pdu = PDU(Opcode.SCSI_COMMAND, flags=flags, lun=encode_lun(lun), itt=itt,
                  w20=edtl if edtl is not None else (len(write) if write else read), w24=sn,
                  w32=w[0], w36=w[1], w40=w[2], w44=w[3], data=data)
        return itt, self.send(pdu, self.reader.header_digest, self.reader.data_digest)

    def executes(self) -> list[ExecuteCommand]:
        ev = [e for e in self.events if isinstance(e, ExecuteCommand)]
        self.events = [e for e in self.events if not isinstance(e, ExecuteCommand)]
        return ev

    def complete(self, ev: ExecuteCommand, result: ScsiResult) -> list[PDU]:
        self.events += self.conn.command_done(ev.task, result)
        return self.collect()

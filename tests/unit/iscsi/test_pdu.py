"""PDU codec: digests, framing, LUN and text encodings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storaged.iscsi.pdu import (
    PDU,
    DigestError,
    Opcode,
    PDUError,
    PDUReader,
    crc32c,
    decode_lun,
    encode_bytes,
    encode_lun,
    format_text,
    parse_text,
)


def test_crc32c_matches_rfc3720_vector_for_32_zero_bytes() -> None:
    # RFC 3720 appendix B.4: 32 bytes of zeroes -> aa 36 91 8a on the wire
    assert crc32c(bytes(32)).to_bytes(4, "little") == bytes.fromhex("aa36918a")


def test_crc32c_matches_rfc3720_vector_for_32_ff_bytes() -> None:
    assert crc32c(b"\xff" * 32).to_bytes(4, "little") == bytes.fromhex("43aba862")


def test_roundtrip_with_digests_and_padding() -> None:
    pdu = PDU(Opcode.NOP_IN, flags=0x80, itt=7, w20=0xFFFFFFFF, w24=3, data=b"hello")
    raw = encode_bytes(pdu, True, True)
    assert len(raw) == 48 + 4 + 8 + 4  # header, header digest, data padded to 8, data digest
    r = PDUReader()
    r.header_digest = r.data_digest = True
    r.feed(raw[:30])
    assert r.next_pdu() is None
    r.feed(raw[30:])
    got = r.next_pdu()
    assert got is not None and got.opcode == Opcode.NOP_IN and got.itt == 7 and got.data == b"hello"


def test_header_digest_mismatch_is_a_framing_error() -> None:
    raw = bytearray(encode_bytes(PDU(Opcode.NOP_OUT, itt=1), True, False))
    raw[48] ^= 1
    r = PDUReader()
    r.header_digest = True
    r.feed(raw)
    with pytest.raises(PDUError):
        r.next_pdu()


def test_data_digest_mismatch_keeps_the_stream_in_sync() -> None:
    bad = bytearray(encode_bytes(PDU(Opcode.NOP_OUT, itt=1, data=b"abcd"), False, True))
    bad[-1] ^= 0xFF
    good = encode_bytes(PDU(Opcode.NOP_OUT, itt=2), False, True)
    r = PDUReader()
    r.data_digest = True
    r.feed(bytes(bad) + good)
    with pytest.raises(DigestError) as info:
        r.next_pdu()
    assert info.value.pdu.itt == 1
    nxt = r.next_pdu()
    assert nxt is not None and nxt.itt == 2


def test_oversize_data_segment_is_refused_before_buffering() -> None:
    pdu = PDU(Opcode.SCSI_COMMAND, itt=1, data=bytes(1000))
    r = PDUReader(max_data_segment=512)
    r.feed(encode_bytes(pdu)[:48])
    with pytest.raises(PDUError):
        r.next_pdu()


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 1000, 16383])
def test_lun_roundtrip(lun: int) -> None:
    assert decode_lun(encode_lun(lun)) == lun


def test_text_roundtrip_and_malformed() -> None:
    pairs = [("InitiatorName", "iqn.x"), ("MaxRecvDataSegmentLength", "8192")]
    assert parse_text(format_text(pairs)) == pairs
    with pytest.raises(ValueError):
        parse_text(b"novalue\0")


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.booleans(), st.booleans())
def test_reader_never_raises_anything_but_framing_errors(blob: bytes, hd: bool, dd: bool) -> None:
    r = PDUReader(max_data_segment=4096)
    r.header_digest, r.data_digest = hd, dd
    r.feed(blob)
    for _ in range(20):
        try:
            if r.next_pdu() is None:
                break
        except (PDUError, DigestError):
            break


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0x3F), st.integers(0, 255), st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_any_pdu_roundtrips(opcode: int, flags: int, data: bytes, itt: int) -> None:
    pdu = PDU(opcode, flags=flags, itt=itt, w24=itt ^ 0xFFFF, data=data)
    r = PDUReader()
    r.feed(encode_bytes(pdu))
    got = r.next_pdu()
    assert got is not None
    assert (got.opcode, got.flags, got.itt, got.w24, bytes(got.data)) == (opcode, flags, itt, itt ^ 0xFFFF, data)

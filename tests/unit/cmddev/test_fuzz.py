"""Hypothesis: the codec only ever returns a valid object or raises BlockError, and the store takes
any write at any offset without raising and runs nothing but complete, CRC-valid command blocks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storaged.cmddev.block import (COMMAND_HEADER, DIRECTORY_HEADER, RESPONSE_HEADER, BlockError, Command,
                                   Directory, Response, ResultStatus, SlotState, crc32c, decode_command,
                                   decode_directory, decode_release, decode_response, encode_release,
                                   peek_command_header)
from storaged.cmddev.dispatch import CommandDispatcher
from storaged.cmddev.store import CommandDeviceStore
from storaged.origin import ORIGIN

from .conftest import H1, H2, SS, VIA_A, pad

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
params_st = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


edits_st = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


# --- codec ---------------------------------------------------------------------------------------


@given(st.binary(max_size=300), st.integers(0, 1 << 20))
def test_decode_command_random(data: bytes, max_input: int) -> None:
    try:
        cmd = decode_command(data, max_input)
    except BlockError:
        return
    assert isinstance(cmd.params, dict)


@given(st.binary(max_size=200))
def test_peek_and_release_random(data: bytes) -> None:
    for f in (lambda d: peek_command_header(d, 1000), decode_release):
        try:
            f(data)
        except BlockError:
            pass


@given(st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1), params_st, st.booleans(), edits_st)
def test_command_roundtrip_and_mutation(process: int, tag: int, params: dict[str, Any], edited: bool,
                                        edits: list[tuple[int, int]]) -> None:
    block = Command(process, tag, params, edited).encode()
    assert decode_command(block, len(block)) == Command(process, tag, params, edited)
    bad = mutate(block, edits)
    try:
        cmd = decode_command(bad, len(block))
    except BlockError:
        return
    assert bad[:4] == b"SDCB" and isinstance(cmd.params, dict)


@given(st.binary(max_size=400), st.integers(0, 2**64 - 1), st.integers(0, 0xFFFF))
def test_valid_crc_around_any_payload(payload: bytes, tag: int, process: int) -> None:
    """Past the CRC the JSON parser sees arbitrary bytes: still only BlockError."""
    hdr = COMMAND_HEADER.pack(b"SDCB", 1, 1, tag, process, 0, len(payload), 0, 0)
    crc = crc32c(hdr, payload)
    block = COMMAND_HEADER.pack(b"SDCB", 1, 1, tag, process, 0, len(payload), crc, 0) + payload
    try:
        decode_command(block, 1 << 20)
    except BlockError:
        pass
    resp = _response_with(st_state=2, status=0, err=b"", payload=payload)
    try:
        decode_response(resp)
    except BlockError:
        pass


def _response_with(st_state: int, status: int, err: bytes, payload: bytes) -> bytes:
    fields = (b"SDRB", 1, st_state, 1, 1, status, len(err), len(payload))
    crc = crc32c(RESPONSE_HEADER.pack(*fields, 0, bytes(8)), err, payload)
    return RESPONSE_HEADER.pack(*fields, crc, bytes(8)) + err + payload


def test_deep_or_huge_json_is_a_block_error() -> None:
    for payload in (b"[" * 5000 + b"]" * 5000, b'{"n":' + b"9" * 5000 + b"}"):
        hdr = COMMAND_HEADER.pack(b"SDCB", 1, 1, 1, 1, 0, len(payload), 0, 0)
        block = COMMAND_HEADER.pack(b"SDCB", 1, 1, 1, 1, 0, len(payload), crc32c(hdr, payload), 0) + payload
        try:
            decode_command(block, 1 << 20)
        except BlockError as exc:
            assert "not JSON" in str(exc)
        else:
            raise AssertionError("decoded")
        try:
            decode_response(_response_with(2, 0, b"", payload))
        except BlockError as exc:
            assert "not JSON" in str(exc)
        else:
            raise AssertionError("decoded")


@given(st.integers(0, 255), st.integers(0, 255))
def test_response_unknown_state_or_status(state: int, status: int) -> None:
    try:
        r = decode_response(_response_with(state, status, b"oops", b""))
    except BlockError:
        assert state not in SlotState._value2member_map_ or status not in ResultStatus._value2member_map_
        return
    assert (r.state, r.status, r.error) == (state, status, "oops")


@given(st.sampled_from(list(SlotState)), st.integers(0, 2**64 - 1), st.integers(0, 0xFFFF),
       st.sampled_from(list(ResultStatus)), st.text(max_size=50), st.none() | params_st, edits_st)
def test_response_roundtrip_and_mutation(state: SlotState, tag: int, process: int, status: ResultStatus,
                                         error: str, data: dict[str, Any] | None,
                                         edits: list[tuple[int, int]]) -> None:
    r = Response(state, tag, process, status, error, data)
    block = r.encode()
    back = decode_response(block + bytes(7))
    assert back == Response(state, tag, process, status, error.encode().decode(), data)
    try:
        decode_response(mutate(block, edits))
    except BlockError:
        pass


@given(st.binary(max_size=300))
def test_decode_response_random(data: bytes) -> None:
    try:
        decode_response(data)
    except BlockError:
        pass


@given(st.integers(4096, 1 << 20), st.lists(st.sampled_from(list(SlotState)), min_size=1, max_size=100),
       edits_st)
def test_directory_roundtrip_and_mutation(slot_size: int, states: list[SlotState],
                                          edits: list[tuple[int, int]]) -> None:
    block = Directory(slot_size, len(states), states).encode()
    assert decode_directory(block + bytes(100)) == Directory(slot_size, len(states), states)
    try:
        d = decode_directory(mutate(block, edits))
    except BlockError:
        return
    assert all(isinstance(s, SlotState) for s in d.states)


@given(st.binary(max_size=300))
def test_decode_directory_random(data: bytes) -> None:
    try:
        decode_directory(data)
    except BlockError:
        pass


@given(st.binary(max_size=64))
def test_decode_directory_huge_slot_count(tail: bytes) -> None:
    data = DIRECTORY_HEADER.pack(b"SDCD", 1, 0, 4096, 0xFFFFFFFF, 0) + tail
    try:
        decode_directory(data)
    except BlockError:
        pass


# --- the store --------------------------------------------------------------------------------

FUZZ_SLOTS = 6
FUZZ_SIZE = (FUZZ_SLOTS + 1) * SS + 1024  # with a tail
ORIGINS = [H1, H2, VIA_A]


def canon(origin: str, cmd: Command) -> tuple[str, int, int, str, bool]:
    return origin, cmd.process, cmd.tag, json.dumps(cmd.params, sort_keys=True), cmd.edited_data


@st.composite
def write_ops(draw: st.DrawFn) -> list[tuple[str, int, bytes, Command | None]]:
    """Writes of (origin, offset, data, the command whose bytes these are, if any)."""
    origin = draw(st.sampled_from(ORIGINS))
    kind = draw(st.sampled_from(["random", "command", "command", "command", "split", "split", "fragment",
                                 "release", "release", "corrupt", "zero"]))
    slot = draw(st.sampled_from([0, FUZZ_SLOTS + 1] + list(range(1, FUZZ_SLOTS + 1)) * 3))
    tag = draw(st.integers(1, 4))
    cmd = Command(draw(st.integers(1, 4)), tag, draw(params_st), draw(st.booleans()))
    block = pad(cmd.encode())
    base = slot * SS
    if kind == "random":
        offset = draw(st.integers(-10, FUZZ_SIZE + 10))
        return [(origin, offset, draw(st.binary(min_size=1, max_size=SS + 100)), None)]
    if kind == "command":
        return [(origin, base + draw(st.sampled_from([0, 0, 0, 512, -512])), block, cmd)]
    if kind == "split":
        k = draw(st.integers(1, len(block) - 1))
        return [(origin, base, block[:k], cmd), (origin, base + k, block[k:], cmd)]
    if kind == "fragment":
        start = draw(st.integers(0, len(block) - 1))
        end = draw(st.integers(start + 1, len(block)))
        return [(origin, base + start, block[start:end], cmd)]
    if kind == "release":
        return [(origin, base, pad(encode_release(draw(st.integers(0, 4)))), None)]
    if kind == "zero":
        return [(origin, base + draw(st.integers(0, SS)), bytes(draw(st.integers(1, 2 * SS))), None)]
    return [(origin, base, mutate(block, draw(edits_st)), cmd)]


read_op = st.tuples(st.sampled_from(ORIGINS + [""]), st.integers(-10, FUZZ_SIZE + 10), st.integers(0, 3 * SS))
_write = write_ops().map(lambda w: ("w", w))
ops_st = st.lists(st.one_of(_write, _write, _write, read_op.map(lambda r: ("r", r)),
                            st.tuples(st.sampled_from(ORIGINS), st.integers(0, FUZZ_SIZE),
                                      st.integers(0, 2 * SS)).map(lambda z: ("z", z)),
                            st.integers(0, 400).map(lambda dt: ("t", dt)),
                            st.just(("y", None))),
                  min_size=2, max_size=40)


@st.composite
def scenario_st(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Random operations with 1-4 whole commands at slot starts mixed in, so that commands do run."""
    ops = draw(ops_st)
    for _ in range(draw(st.integers(1, 4))):
        origin = draw(st.sampled_from(ORIGINS))
        cmd = Command(draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(params_st), draw(st.booleans()))
        slot = draw(st.integers(1, FUZZ_SLOTS))
        ops.insert(draw(st.integers(0, len(ops))), ("w", [(origin, slot * SS, pad(cmd.encode()), cmd)]))
    return ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_st())
def test_store_never_raises_and_runs_only_valid_blocks(ops: list[tuple[str, Any]]) -> None:
    asyncio.run(_store_scenario(ops))


async def _store_scenario(ops: list[tuple[str, Any]]) -> None:
    executed: list[tuple[str, Command]] = []
    d = CommandDispatcher()
    for p in (1, 2, 3):
        def handler(params: dict[str, Any], origin: str, p: int = p) -> dict[str, Any]:
            return {"p": p}
        d.register(p, f"p{p}", handler)
    real_execute = d.execute

    async def recording(cmd: Command, origin: str) -> Response:
        executed.append((origin, cmd))
        if cmd.tag % 2:
            await asyncio.sleep(0)
        return await real_execute(cmd, origin)

    d.execute = recording  # type: ignore[method-assign]
    now = [0.0]
    store = CommandDeviceStore(FUZZ_SIZE, d, slot_size=SS, result_ttl=300, tag_ttl=600, clock=lambda: now[0],
                               max_running=2)
    generated: set[tuple[str, int, int, str, bool]] = set()
    for op, arg in ops:
        if op == "w":
            for origin, offset, data, cmd in arg:
                if cmd is not None:
                    generated.add(canon(origin, cmd))
                ORIGIN.set(origin)
                await store.write(offset, data)
        elif op == "r":
            origin, offset, length = arg
            ORIGIN.set(origin)
            out = await store.read(offset, length)
            assert len(out) == length
            if offset <= 0 and offset + length >= DIRECTORY_HEADER.size + FUZZ_SLOTS:
                assert decode_directory(out[-offset:]).slots == FUZZ_SLOTS
        elif op == "z":
            origin, offset, length = arg
            ORIGIN.set(origin)
            await store.write_zeroes(offset, length)
        elif op == "t":
            now[0] += arg
        else:
            await asyncio.sleep(0)
        # every slot reads as a valid response block to everyone, whatever happened
        for who in ORIGINS:
            ORIGIN.set(who)
            for slot in range(1, FUZZ_SLOTS + 1):
                r = decode_response(await store.read(slot * SS, SS))
                if r.state in (SlotState.FREE, SlotState.BUSY_OTHER):
                    assert (r.tag, r.process, r.data, r.error) == (0, 0, None, "")
    await store.wait_idle()
    assert store.internal_errors == 0 and store.running == 0
    event(f"commands executed: {min(len(executed), 3)}{'+' if len(executed) >= 3 else ''}")
    # whatever ran is exactly a command this origin wrote (whole, or in pieces that completed it)
    for origin, cmd in executed:
        assert canon(origin, cmd) in generated, (origin, cmd)
    # no (origin, tag) ran twice: a tag is forgotten only tag_ttl (600 s) after its release
    if now[0] < 600:
        keys = [(o, c.tag) for o, c in executed]
        assert len(keys) == len(set(keys)), keys

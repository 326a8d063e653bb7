"""CommandDeviceStore: the command cycle, partial and bad blocks, tags, expiry, origins, ACL, reads."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from storaged.backstore.base import Extent
from storaged.cmddev.block import (COMMAND_HEADER, RESPONSE_HEADER, Command, Directory, ResultStatus,
                                   SlotState, crc32c, decode_directory, decode_response, encode_release)
from storaged.cmddev.commands import Process
from storaged.cmddev.dispatch import CommandDispatcher, CommandError
from storaged.cmddev.store import CommandDeviceStore
from storaged.origin import current_origin

from .conftest import H1, H2, SIZE, SLOTS, SS, VIA_A, FakeControl, Harness, as_origin, pad, settle


class Gated:
    """A dispatcher whose commands count their runs and wait for ``open`` before finishing."""

    def __init__(self) -> None:
        self.d = CommandDispatcher()
        self.gate = asyncio.Event()
        self.runs: list[tuple[int, str, dict[str, Any]]] = []

        @self.d.register(1, "wait")
        async def wait(params: dict[str, Any], origin: str) -> dict[str, Any]:
            self.runs.append((1, origin, params))
            await self.gate.wait()
            return {"origin": origin, "ctx_origin": current_origin(), "params": params}

        @self.d.register(2, "count")
        def count(params: dict[str, Any], origin: str) -> dict[str, Any]:
            self.runs.append((2, origin, params))
            return {"n": len(self.runs)}


def raw_command(process: int, tag: int, payload: bytes, *, version: int = 1, flags: int = 1,
                length: int | None = None, good_crc: bool = True) -> bytes:
    """A command block with arbitrary payload (valid CRC unless told otherwise)."""
    n = len(payload) if length is None else length
    hdr = COMMAND_HEADER.pack(b"SDCB", version, flags, tag, process, 0, n, 0, 0)
    crc = crc32c(hdr, payload) ^ (0 if good_crc else 1)
    return COMMAND_HEADER.pack(b"SDCB", version, flags, tag, process, 0, n, crc, 0) + payload


# --- the command cycle ------------------------------------------------------------------------


async def test_full_command_cycle(h: Harness) -> None:
    d = await h.directory(H1)
    assert (d.slot_size, d.slots) == (SS, SLOTS)
    assert d.states == [SlotState.FREE] * SLOTS

    cmd = Command(Process.ECHO, 0x1234, {"hello": "world", "n": [1, 2]})
    await h.send(H1, 3, cmd)
    r = await h.slot(H1, 3)  # accepted, not yet run: the write did not wait for the command
    assert (r.state, r.tag, r.process) == (SlotState.PENDING, 0x1234, Process.ECHO)
    assert (await h.directory(H1)).states[2] == SlotState.PENDING

    await h.store.wait_idle()
    r = await h.slot(H1, 3)
    assert (r.state, r.status, r.tag, r.process, r.error) == (SlotState.DONE, ResultStatus.OK, 0x1234, 1, "")
    assert r.data == {"echo": {"hello": "world", "n": [1, 2]}}
    assert (await h.slot(H1, 3)).data == r.data  # reading again does not consume it
    d = await h.directory(H1)
    assert d.states[2] == SlotState.DONE and d.states.count(SlotState.FREE) == SLOTS - 1
    assert (await h.directory(H2)).states[2] == SlotState.BUSY_OTHER

    await h.release(H1, 3, 0x1234)
    r = await h.slot(H1, 3)
    assert (r.state, r.tag, r.data) == (SlotState.FREE, 0, None)
    assert (await h.directory(H1)).states == [SlotState.FREE] * SLOTS
    assert h.store.executed == 1


async def test_reads_are_padded_per_slot_and_slot_reads_are_consistent(h: Harness) -> None:
    r = await h.run(H1, 1, Command(Process.ECHO, 5, {"x": 1}))
    whole = await h.read(H1, SS, SS)
    end = RESPONSE_HEADER.size + len(r.error.encode()) + len(b'{"echo":{"x":1}}')
    assert whole[end:] == bytes(SS - end)
    # an unaligned read across slots 1..2 matches the per-slot images
    part = await h.read(H1, SS + 100, SS)
    assert part == whole[100:] + (await h.read(H1, 2 * SS, 100))
    # reading only the tail of a response returns those bytes
    assert await h.read(H1, SS + 8, 8) == whole[8:16]


async def test_array_info_and_lun_list_edited_data(h: Harness) -> None:
    r = await h.run(H1, 1, Command(Process.ARRAY_INFO, 1))
    assert r.status == ResultStatus.OK and r.data == FakeControl().array_info()
    r = await h.run(H1, 2, Command(Process.LUN_LIST, 2))
    assert r.data == {"luns": FakeControl().array_info()["luns"]}
    r = await h.run(H1, 4, Command(Process.LINK_STATUS, 3))
    assert r.data["links"][0]["peer"] == "site-a"
    assert h.control.calls == ["array_info", "array_info", "link_status"]


async def test_no_edited_data_keeps_status_until_release(h: Harness) -> None:
    r = await h.run(H1, 1, Command(Process.ARRAY_INFO, 9, edited_data=False))
    assert (r.state, r.status, r.tag, r.data) == (SlotState.DONE, ResultStatus.OK, 9, None)
    assert h.control.calls == ["array_info"]  # it ran
    raw = await h.read(H1, SS, SS)
    assert raw[RESPONSE_HEADER.size:] == bytes(SS - RESPONSE_HEADER.size)  # the command itself is gone
    await h.release(H1, 1, 9)
    assert (await h.slot(H1, 1)).state == SlotState.FREE


async def test_command_runs_with_its_origin_in_context() -> None:
    g = Gated()
    h = Harness(g.d)
    await h.send(VIA_A, 1, Command(1, 1, {"a": 1}))
    g.gate.set()
    await h.store.wait_idle()
    r = await h.slot(VIA_A, 1)
    assert r.data == {"origin": VIA_A, "ctx_origin": VIA_A, "params": {"a": 1}}


# --- partial and bad blocks -----------------------------------------------------------------


async def test_block_in_two_writes_runs_only_when_complete() -> None:
    g = Gated()
    h = Harness(g.d)
    block = pad(Command(2, 77, {"blob": "x" * 1500}).encode())
    assert len(block) == 2048
    await h.write(H1, 2 * SS, block[:512])
    await settle()
    r = await h.slot(H1, 2)
    assert (r.state, r.tag, r.process) == (SlotState.INCOMPLETE, 77, 2)
    assert (await h.directory(H1)).states[1] == SlotState.INCOMPLETE
    assert (await h.directory(H2)).states[1] == SlotState.BUSY_OTHER
    await h.write(H1, 2 * SS + 512, block[512:1024])
    await settle()
    assert g.runs == [] and (await h.slot(H1, 2)).state == SlotState.INCOMPLETE
    await h.write(H1, 2 * SS + 1024, block[1024:])
    await h.store.wait_idle()
    r = await h.slot(H1, 2)
    assert (r.state, r.status, r.data) == (SlotState.DONE, ResultStatus.OK, {"n": 1})
    assert len(g.runs) == 1 and g.runs[0][2] == {"blob": "x" * 1500}


async def test_partial_block_rules() -> None:
    g = Gated()
    h = Harness(g.d)
    block = pad(Command(2, 78, {"blob": "y" * 1500}).encode())
    await h.write(H1, SS, block[:512])
    await h.write(H1, SS + 1024, block[1024:])  # a gap: ignored
    await h.write(H2, SS + 512, block[512:1024])  # another initiator: ignored
    await settle()
    assert (await h.slot(H1, 1)).state == SlotState.INCOMPLETE and g.runs == []
    # a header alone, a byte at a time
    await h.write(H1, 2 * SS, block[:3])
    assert (await h.slot(H1, 2)).state == SlotState.INCOMPLETE
    for i in range(3, len(block)):
        await h.write(H1, 2 * SS + i, block[i : i + 1])
    await h.store.wait_idle()
    assert (await h.slot(H1, 2)).status == ResultStatus.OK
    assert len(g.runs) == 1
    # the torn block in slot 1 is abandoned: the host starts over with a new command in it
    await h.send(H1, 1, Command(2, 79))
    await h.store.wait_idle()
    r = await h.slot(H1, 1)
    assert (r.tag, r.status) == (79, ResultStatus.OK)
    assert [p for _n, _o, p in g.runs] == [{"blob": "y" * 1500}, {}]


async def test_torn_block_expires_unexecuted() -> None:
    g = Gated()
    h = Harness(g.d, result_ttl=30)
    await h.write(H1, SS, pad(Command(2, 5, {"blob": "z" * 1000}).encode())[:512])
    h.clock.advance(31)
    assert (await h.slot(H1, 1)).state == SlotState.FREE
    assert (await h.directory(H2)).states[0] == SlotState.FREE
    await h.write(H1, SS + 512, bytes(512))  # the rest arrives too late: nothing to continue
    await settle()
    assert g.runs == [] and (await h.slot(H1, 1)).state == SlotState.FREE


def _flip(block: bytes, at: int) -> bytes:
    b = bytearray(block)
    b[at] ^= 0x40
    return bytes(b)


GOOD = Command(2, 0x42, {"k": "v"}).encode()


@pytest.mark.parametrize("block,words", [
    (b"\xde\xad\xbe\xef" * 128, ["bad magic"]),
    (b"SDCX" + GOOD[4:], ["bad magic"]),
    (_flip(GOOD, len(GOOD) - 2), ["checksum"]),
    (_flip(GOOD, 9), ["checksum"]),  # tag damaged
    (raw_command(2, 0x42, b'{"k":"v"}', good_crc=False), ["checksum"]),
    (raw_command(2, 0x42, b'{"k":"v"}', version=2), ["version 2"]),
    (raw_command(2, 0x42, b"", length=SS), ["exceeds the slot"]),
    (raw_command(2, 0x42, b"{not json"), ["not JSON"]),
    (raw_command(2, 0x42, b"\xff\xfe"), ["not JSON"]),
    (raw_command(2, 0x42, b"[1,2]"), ["JSON object"]),
    (raw_command(2, 0x42, b"[" * 2000 + b"]" * 2000), ["not JSON"]),
])
async def test_bad_blocks_are_answered_and_not_executed(block: bytes, words: list[str]) -> None:
    g = Gated()
    h = Harness(g.d)
    await h.write(H1, 5 * SS, pad(block)[:SS])
    await h.store.wait_idle()
    r = await h.slot(H1, 5)
    assert (r.state, r.status) == (SlotState.DONE, ResultStatus.BAD_BLOCK), r
    for w in words:
        assert w in r.error
    assert g.runs == [] and h.store.executed == 0 and h.store.internal_errors == 0
    assert (await h.directory(H2)).states[4] == SlotState.BUSY_OTHER
    await h.release(H1, 5, r.tag)
    assert (await h.slot(H1, 5)).state == SlotState.FREE


async def test_oversize_header_is_answered_before_the_rest_arrives() -> None:
    g = Gated()
    h = Harness(g.d)
    await h.write(H1, SS, raw_command(2, 3, b"", length=1 << 30)[:32] + bytes(480))
    r = await h.slot(H1, 1)
    assert (r.status, r.tag) == (ResultStatus.BAD_BLOCK, 3) and "exceeds" in r.error


async def test_writes_that_are_not_commands_are_ignored(h: Harness) -> None:
    before = await h.snapshot(H1)
    block = pad(Command(Process.ECHO, 1).encode())
    await h.write(H1, 0, block)  # the directory is read-only
    await h.write(H1, SS, block + bytes(SS))  # covers two slots
    await h.write(H1, SS + 512, block)  # not at a slot start, nothing arriving there
    await h.write(H1, 3 * SS, bytes(SS))  # zeros
    await h.write(H1, SIZE - 512, block)  # inside the last slot, not at its start
    await h.write(H1, SIZE, block)  # past the end
    await h.write(H1, -512, block)
    await h.write(H1, 2 * SS, b"")
    await h.release(H1, 4, 99)  # releasing a free slot
    await settle()
    assert await h.snapshot(H1) == before
    assert h.store.executed == 0 and h.store.internal_errors == 0


async def test_tail_past_the_last_slot() -> None:
    h = Harness(size=SIZE + 2048)
    assert h.store.slots == SLOTS
    assert await h.read(H1, SIZE - 100, 2148) == bytes(2148)
    await h.write(H1, SIZE, pad(Command(1, 1).encode()))
    assert h.store.executed == 0


# --- releases --------------------------------------------------------------------------------


async def test_release_needs_matching_tag(h: Harness) -> None:
    await h.run(H1, 1, Command(Process.ECHO, 10))
    await h.release(H1, 1, 11)
    assert (await h.slot(H1, 1)).state == SlotState.DONE
    await h.write(H1, SS, b"SDRL\x00\x02\x00\x00" + struct.pack(">Q", 10) + bytes(496))  # bad version
    assert (await h.slot(H1, 1)).state == SlotState.DONE
    await h.release(H1, 1, 10)
    assert (await h.slot(H1, 1)).state == SlotState.FREE


async def test_release_of_a_pending_command_frees_the_slot_and_keeps_the_tag() -> None:
    g = Gated()
    h = Harness(g.d)
    await h.send(H1, 1, Command(1, 7))
    await settle()
    await h.release(H1, 1, 7)
    assert (await h.slot(H1, 1)).state == SlotState.FREE
    # the slot can be reused while the old command still runs
    await h.send(H1, 1, Command(2, 8))
    await settle()
    assert (await h.slot(H1, 1)).tag == 8
    g.gate.set()
    await h.store.wait_idle()
    r = await h.slot(H1, 1)
    assert (r.tag, r.data) == (8, {"n": 2})  # the late completion did not touch slot 1
    r = await h.run(H1, 2, Command(1, 7))
    assert r.status == ResultStatus.DUPLICATE and len(g.runs) == 2


async def test_write_zeroes_and_unmap_release_own_slots_only(h: Harness) -> None:
    for slot, tag in ((1, 1), (2, 2), (3, 3)):
        await h.run(H1, slot, Command(Process.ECHO, tag))
    await h.run(H2, 4, Command(Process.ECHO, 4))
    with as_origin(H1):
        await h.store.write_zeroes(SS + 512, SS)  # covers slot 2's start only
    assert [s.name for s in (await h.directory(H1)).states[:4]] == ["DONE", "FREE", "DONE", "BUSY_OTHER"]
    with as_origin(H1):
        await h.store.unmap(0, SIZE)  # everything: only H1's slots go
        await h.store.write_zeroes(SS, 0)
    assert [s.name for s in (await h.directory(H1)).states[:4]] == ["FREE", "FREE", "FREE", "BUSY_OTHER"]
    assert (await h.slot(H2, 4)).state == SlotState.DONE


async def test_flush_extents_and_compare_and_write(h: Harness) -> None:
    await h.run(H1, 1, Command(Process.ECHO, 21))
    with as_origin(H1):
        await h.store.flush()
        assert await h.store.extents(0, SIZE) == [Extent(0, SIZE, True)]
        image = await h.store.read(SS, 512)
        # a miscompare changes nothing
        assert await h.store.compare_and_write(SS, bytes(512), pad(encode_release(21))) == 0
        assert (await h.slot(H1, 1)).state == SlotState.DONE
        # comparing against what the reader sees works, and the write is a release
        assert await h.store.compare_and_write(SS, image, pad(encode_release(21))) == -1
    assert (await h.slot(H1, 1)).state == SlotState.FREE
    assert h.store.thin is False and h.store.size == SIZE


# --- tags -----------------------------------------------------------------------------------


async def test_duplicate_tag_is_not_executed_twice() -> None:
    g = Gated()
    h = Harness(g.d)
    r1 = await h.run(H1, 1, Command(2, 500, {"a": 1}))
    assert r1.data == {"n": 1}
    # the same command again, in the same slot (a retried WRITE) and in another slot
    assert (await h.run(H1, 1, Command(2, 500, {"a": 1}))).data == {"n": 1}
    r2 = await h.run(H1, 2, Command(2, 500, {"a": 1}))
    assert (r2.state, r2.status, r2.data) == (SlotState.DONE, ResultStatus.OK, {"n": 1})
    assert len(g.runs) == 1 and h.store.executed == 1
    # released in one slot, still held by the other
    await h.release(H1, 1, 500)
    assert (await h.run(H1, 3, Command(2, 500))).data == {"n": 1}
    await h.release(H1, 2, 500)
    await h.release(H1, 3, 500)
    # released everywhere: DUPLICATE, still not executed
    r = await h.run(H1, 4, Command(2, 500, {"a": 1}))
    assert (r.state, r.status, r.tag) == (SlotState.DONE, ResultStatus.DUPLICATE, 500)
    assert "already executed" in r.error
    assert len(g.runs) == 1
    # tags are per origin: another initiator may use the same number
    assert (await h.run(H2, 5, Command(2, 500))).status == ResultStatus.OK
    assert len(g.runs) == 2


async def test_duplicate_while_running_shares_the_result() -> None:
    g = Gated()
    h = Harness(g.d)
    await h.send(H1, 1, Command(1, 9))
    await h.send(H1, 2, Command(1, 9))
    await settle()
    assert (await h.slot(H1, 2)).state == SlotState.PENDING
    g.gate.set()
    await h.store.wait_idle()
    assert (await h.slot(H1, 1)).data == (await h.slot(H1, 2)).data
    assert len(g.runs) == 1


async def test_rewriting_a_new_command_into_an_own_slot_replaces_the_result(h: Harness) -> None:
    await h.run(H1, 1, Command(Process.ECHO, 1, {"first": 1}))
    r = await h.run(H1, 1, Command(Process.ECHO, 2, {"second": 2}))
    assert (r.tag, r.data) == (2, {"echo": {"second": 2}})
    assert (await h.run(H1, 2, Command(Process.ECHO, 1))).status == ResultStatus.DUPLICATE


# --- expiry ---------------------------------------------------------------------------------


async def test_results_expire_and_tags_are_forgotten_later() -> None:
    g = Gated()
    h = Harness(g.d, result_ttl=300, tag_ttl=600)
    await h.run(H1, 1, Command(2, 1))
    h.clock.advance(299)
    assert (await h.slot(H1, 1)).state == SlotState.DONE
    h.clock.advance(2)
    assert (await h.slot(H1, 1)).state == SlotState.FREE
    assert (await h.directory(H1)).states[0] == SlotState.FREE
    h.clock.advance(500)
    assert (await h.run(H1, 2, Command(2, 1))).status == ResultStatus.DUPLICATE
    h.clock.advance(101)  # 601 s after the result expired: the tag is forgotten
    assert (await h.run(H1, 3, Command(2, 1))).status == ResultStatus.OK
    assert len(g.runs) == 2


async def test_a_running_command_does_not_expire() -> None:
    g = Gated()
    h = Harness(g.d, result_ttl=10)
    await h.send(H1, 1, Command(1, 1))
    h.clock.advance(100)
    assert (await h.slot(H1, 1)).state == SlotState.PENDING
    g.gate.set()
    await h.store.wait_idle()
    h.clock.advance(9)
    assert (await h.slot(H1, 1)).state == SlotState.DONE
    h.clock.advance(2)
    assert (await h.slot(H1, 1)).state == SlotState.FREE


async def test_tag_memory_is_bounded() -> None:
    g = Gated()
    h = Harness(g.d, max_tags=3)
    for tag in range(1, 6):
        await h.run(H1, 1, Command(2, tag))
    await h.release(H1, 1, 5)
    assert (await h.run(H1, 2, Command(2, 5))).status == ResultStatus.DUPLICATE
    assert (await h.run(H1, 3, Command(2, 1))).status == ResultStatus.OK  # forgotten: oldest dropped


# --- origins and ACL ----------------------------------------------------------------------------


async def test_two_origins_in_two_slots(h: Harness) -> None:
    await h.send(H1, 1, Command(Process.ECHO, 1, {"who": 1}))
    await h.send(H2, 2, Command(Process.ECHO, 1, {"who": 2}))
    await h.store.wait_idle()
    assert (await h.slot(H1, 1)).data == {"echo": {"who": 1}}
    assert (await h.slot(H2, 2)).data == {"echo": {"who": 2}}
    d1, d2 = await h.directory(H1), await h.directory(H2)
    assert d1.states[:2] == [SlotState.DONE, SlotState.BUSY_OTHER]
    assert d2.states[:2] == [SlotState.BUSY_OTHER, SlotState.DONE]
    # the same initiator through peer array site-a is a different origin
    assert (await h.directory(VIA_A)).states[:2] == [SlotState.BUSY_OTHER] * 2


async def test_other_origin_cannot_read_write_or_release(h: Harness) -> None:
    await h.run(H1, 1, Command(Process.ECHO, 33, {"secret": 1}))
    r = await h.slot(H2, 1)
    assert (r.state, r.tag, r.process, r.data, r.error) == (SlotState.BUSY_OTHER, 0, 0, None, "")
    await h.release(H2, 1, 33)
    with as_origin(H2):
        await h.store.write_zeroes(0, SIZE)
    await h.send(H2, 1, Command(Process.ECHO, 34))
    await h.store.wait_idle()
    r = await h.slot(H1, 1)
    assert (r.state, r.tag, r.data) == (SlotState.DONE, 33, {"echo": {"secret": 1}})
    assert (await h.slot(H2, 1)).state == SlotState.BUSY_OTHER
    assert h.store.executed == 1


async def test_not_allowed() -> None:
    h = Harness(allowed=(H1, "site-a/*"))
    r = await h.run(H2, 1, Command(Process.ECHO, 1))
    assert (r.state, r.status, r.tag, r.data) == (SlotState.DONE, ResultStatus.NOT_ALLOWED, 1, None)
    assert H2 in r.error
    assert (await h.run("site-a", 2, Command(Process.ECHO, 1))).status == ResultStatus.NOT_ALLOWED
    assert (await h.run("", 3, Command(Process.ECHO, 1))).status == ResultStatus.NOT_ALLOWED
    assert (await h.run(H1, 4, Command(Process.ECHO, 1))).status == ResultStatus.OK
    assert (await h.run(VIA_A, 5, Command(Process.ECHO, 1))).status == ResultStatus.OK
    assert h.store.executed == 2
    await h.release(H2, 1, 1)
    assert (await h.slot(H2, 1)).state == SlotState.FREE


async def test_acl_patterns() -> None:
    store = CommandDeviceStore(SIZE, CommandDispatcher(), slot_size=SS, allowed=("iqn.2026-11.test:*",))
    assert store.is_allowed(H1) and not store.is_allowed(VIA_A)
    assert CommandDeviceStore(SIZE, CommandDispatcher(), slot_size=SS, allowed=("*",)).is_allowed("")
    assert CommandDeviceStore(SIZE, CommandDispatcher(), slot_size=SS).is_allowed("anyone")
    assert not CommandDeviceStore(SIZE, CommandDispatcher(), slot_size=SS, allowed=()).is_allowed(H1)


# --- stray reads (blkid, udev, readahead) -----------------------------------------------------


async def test_blkid_style_reads_never_change_state() -> None:
    g = Gated()
    h = Harness(g.d, size=64 * SS)
    await h.run(H1, 1, Command(2, 1, {"x": 1}))  # DONE
    await h.send(H1, 2, Command(1, 2))  # PENDING
    await h.write(H1, 3 * SS, pad(Command(2, 3, {"b": "q" * 900}).encode())[:512])  # INCOMPLETE
    await h.run(H1, 63, Command(2, 4))  # the last slot
    await h.run(H2, 4, Command(2, 5))
    size = 64 * SS
    for who in (H1, H2, VIA_A, ""):
        before = await h.read(who, 0, size)
        for off, n in ((0, 65536), (size - 4096, 4096), (size - 512, 512), (0, 512), (SS - 512, 1024),
                       (0, size), (size - 65536, 65536), (3 * SS + 4, 1), (1, 3 * SS)):
            await h.read(who, off, n)
        assert await h.read(who, 0, size) == before
    assert decode_directory(await h.read(H1, 0, 65536)).states[:4] == [
        SlotState.DONE, SlotState.PENDING, SlotState.INCOMPLETE, SlotState.BUSY_OTHER]
    assert await h.read(H1, size + 100, 512) == bytes(512)  # out of range: zeros, no error
    g.gate.set()
    await h.store.wait_idle()
    assert (await h.slot(H1, 1)).data == {"n": 1}
    assert (await h.slot(H1, 2)).state == SlotState.DONE
    assert len(g.runs) == 4 and h.store.internal_errors == 0


# --- statuses ------------------------------------------------------------------------------------


async def test_unknown_process(h: Harness) -> None:
    r = await h.run(H1, 1, Command(999, 1))
    assert (r.status, r.process, r.data) == (ResultStatus.UNKNOWN_PROCESS, 999, None)
    assert "999" in r.error and "1 (echo)" in r.error and "4 (lun_list)" in r.error


async def test_handler_exceptions_become_statuses() -> None:
    d = CommandDispatcher()

    @d.register(1, "wrong_state")
    def wrong_state(params: dict[str, Any], origin: str) -> None:
        raise CommandError(ResultStatus.WRONG_STATE, "pair is suspended", {"state": "PSUS"})

    @d.register(2, "needs_lun")
    def needs_lun(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return {"lun": params["lun"]}

    @d.register(3, "boom")
    async def boom(params: dict[str, Any], origin: str) -> None:
        raise RuntimeError("disk on fire")

    h = Harness(d)
    r = await h.run(H1, 1, Command(1, 1))
    assert (r.status, r.error, r.data) == (ResultStatus.WRONG_STATE, "wrong_state: pair is suspended",
                                          {"state": "PSUS"})
    r = await h.run(H1, 2, Command(2, 2, {}))
    assert r.status == ResultStatus.BAD_PARAMETER and "'lun'" in r.error
    r = await h.run(H1, 3, Command(3, 3))
    assert r.status == ResultStatus.FAILED and "disk on fire" in r.error
    assert h.store.internal_errors == 0


async def test_edited_data_larger_than_the_slot_fails_cleanly() -> None:
    d = CommandDispatcher()
    d.register(1, "big", lambda params, origin: {"blob": "x" * (2 * SS)})
    h = Harness(d)
    r = await h.run(H1, 1, Command(1, 1))
    assert (r.state, r.status, r.data) == (SlotState.DONE, ResultStatus.FAILED, None)
    assert "does not fit" in r.error
    r = await h.run(H1, 2, Command(1, 2, edited_data=False))
    assert (r.status, r.data) == (ResultStatus.OK, None)


async def test_busy_beyond_max_running() -> None:
    g = Gated()
    h = Harness(g.d, max_running=2)
    await h.send(H1, 1, Command(1, 1))
    await h.send(H1, 2, Command(1, 2))
    await h.send(H2, 3, Command(1, 3))
    await settle()
    r = await h.slot(H2, 3)
    assert (r.state, r.status, r.tag) == (SlotState.DONE, ResultStatus.BUSY, 3)
    g.gate.set()
    await h.store.wait_idle()
    # BUSY did not run it, so the same tag may be sent again
    assert (await h.run(H2, 3, Command(2, 3))).status == ResultStatus.OK
    assert h.store.running == 0


async def test_close_cancels_running_commands() -> None:
    g = Gated()
    h = Harness(g.d)
    await h.send(H1, 1, Command(1, 1))
    await settle()
    h.store.close()
    await h.store.wait_idle()
    r = await h.slot(H1, 1)
    assert (r.state, r.status, r.tag) == (SlotState.DONE, ResultStatus.FAILED, 1)
    assert "stopped" in r.error and h.store.running == 0


# --- geometry --------------------------------------------------------------------------------------


def test_geometry_checks() -> None:
    with pytest.raises(ValueError, match="no command slot"):
        CommandDeviceStore(SS, CommandDispatcher(), slot_size=SS)
    with pytest.raises(ValueError, match="multiple of 512"):
        CommandDeviceStore(SIZE, CommandDispatcher(), slot_size=1000)
    s = CommandDeviceStore(16 << 20, CommandDispatcher())
    assert (s.slot_size, s.slots) == (256 * 1024, 63)
    s = CommandDeviceStore(16 << 20, CommandDispatcher(), slot_size=4096)  # 4095 slots: capped to fit slot 0
    assert s.slots == 4096 - 20
    assert Directory(4096, s.slots, [SlotState.FREE] * s.slots).encode().__len__() == 4096


async def test_directory_fills_slot_zero_exactly_when_capped() -> None:
    s = CommandDeviceStore(16 << 20, CommandDispatcher(), slot_size=4096)
    d = decode_directory(await s.read(0, 4096))
    assert d.slots == 4076 and set(d.states) == {SlotState.FREE}
    assert decode_response(await s.read(4076 * 4096, 4096)).state == SlotState.FREE
    assert await s.read(4077 * 4096, 4096) == bytes(4096)  # past the last slot


async def test_close_before_the_command_started() -> None:
    g = Gated()
    h = Harness(g.d)
    await h.send(H1, 1, Command(1, 1))
    h.store.close()  # the task has not run a single step yet
    await h.store.wait_idle()
    r = await h.slot(H1, 1)
    assert (r.state, r.status) == (SlotState.DONE, ResultStatus.FAILED)
    assert g.runs == [] and h.store.running == 0


async def test_a_dispatcher_that_raises_is_contained() -> None:
    class Broken:
        async def execute(self, command: Command, origin: str) -> Any:
            raise RuntimeError("dispatcher bug")

    store = CommandDeviceStore(SIZE, Broken(), slot_size=SS)
    with as_origin(H1):
        await store.write(SS, pad(Command(1, 1).encode()))
        await store.wait_idle()
        r = decode_response(await store.read(SS, SS))
    assert (r.state, r.status, r.tag) == (SlotState.DONE, ResultStatus.FAILED, 1)
    assert "dispatcher bug" in r.error and store.running == 0

"""CommandDeviceClient against the real CommandDeviceStore: the host protocol, races, errors."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from hostctl.client import CommandDeviceClient, parse_process, process_name
from hostctl.errors import (
    EXIT_ARRAY,
    EXIT_PROTOCOL,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    ArrayError,
    CommandTimeout,
    ProtocolError,
    UsageError,
)
from storaged.backstore.memory import MemoryBackstore
from storaged.cmddev.block import (
    Command,
    ResultStatus,
    SlotState,
    decode_directory,
    decode_response,
)
from storaged.cmddev.store import CommandDeviceStore

from .conftest import FAIL, HOST, OTHER, SLOW, StoreIO, make_store


def client(store: CommandDeviceStore, origin: str = HOST, **kw) -> CommandDeviceClient:
    kw.setdefault("array", "site-a")
    kw.setdefault("initiator", origin)
    return CommandDeviceClient(StoreIO(store, origin), **kw)


async def test_echo_round_trip_releases_the_slot(store: CommandDeviceStore) -> None:
    c = client(store)
    r = await c.run(1, {"hello": "world", "n": 3})
    assert r.ok and r.state == SlotState.DONE and r.status == ResultStatus.OK
    assert r.data == {"echo": {"hello": "world", "n": 3}, "origin": HOST}
    assert 1 <= r.slot <= store.slots and r.array == "site-a"
    assert store.slot_info() == []  # released
    io = c.io
    assert isinstance(io, StoreIO)
    # command and release are each ONE write, padded to whole blocks, at the slot start
    assert len(io.writes) == 2
    (off1, cmd), (off2, rel) = io.writes
    assert off1 == off2 == r.slot * store.slot_size
    assert len(cmd) % 512 == 0 and len(rel) == 512
    assert cmd[:4] == b"SDCB" and rel[:4] == b"SDRL"
    assert struct.unpack_from(">Q", rel, 8)[0] == r.tag


async def test_to_dict_has_everything(store: CommandDeviceStore) -> None:
    d = (await client(store).run(1, {})).to_dict()
    assert d["state"] == "DONE" and d["status"] == "OK" and d["process_name"] == "ECHO"
    assert len(d["tag"]) == 16 and d["error"] == "" and d["data"]["echo"] == {}


async def test_no_edited_data(store: CommandDeviceStore) -> None:
    r = await client(store).run(1, {"x": 1}, edited_data=False)
    assert r.ok and r.data is None
    assert store.slot_info() == []


async def test_block_size_4096() -> None:
    store = make_store()
    io = StoreIO(store, block_size=4096)
    r = await CommandDeviceClient(io, initiator=HOST).run(1, {"a": 1})
    assert r.ok
    assert all(len(d) == 4096 for _o, d in io.writes)
    store.close()


async def test_large_edited_data_is_read_in_a_second_read(store: CommandDeviceStore) -> None:
    big = "x" * 50_000
    c = client(store)
    r = await c.run(1, {"big": big})
    assert r.data["echo"]["big"] == big


async def test_parameter_too_large_for_a_slot() -> None:
    store = make_store(slot_size=4096)
    with pytest.raises(UsageError, match="does not fit"):
        await client(store).run(1, {"big": "x" * 5000})
    store.close()


async def test_directory_larger_than_the_first_read() -> None:
    store = make_store(size=5001 * 8192, slot_size=8192)  # 5000 slots: directory of 5020 bytes
    c = client(store)
    d = await c.directory()
    assert d.slots == 5000 and len(d.states) == 5000
    assert (await c.run(1, {})).ok
    store.close()


async def test_slot_choice_is_deterministic_per_initiator_and_pid(store: CommandDeviceStore) -> None:
    a1 = await client(store, HOST).run(1, {})
    a2 = await client(store, HOST).run(1, {})
    assert a1.slot == a2.slot  # same start when the slot was released
    b = [(await client(store, f"iqn.2026-11.test:h{i}").run(1, {})).slot for i in range(8)]
    assert len(set(b)) > 1  # different initiators start in different places


async def test_skips_slots_other_initiators_hold(store: CommandDeviceStore) -> None:
    # another host takes every slot but the last two (commands that take a while)
    other = client(store, OTHER)
    tasks = []
    for slot in range(1, store.slots - 1):
        io = other.io
        cmd = Command(SLOW, slot, {"seconds": 0.5}).encode()
        await io.write(slot * store.slot_size, cmd + bytes(-len(cmd) % 512))
    d = await client(store).directory()
    assert d.states.count(SlotState.BUSY_OTHER) == store.slots - 2
    r = await client(store).run(1, {})
    assert r.ok and r.slot in (store.slots - 1, store.slots)
    del tasks


async def test_race_busy_other_after_write_picks_another_slot(store: CommandDeviceStore) -> None:
    """Another initiator claims the chosen slot between our directory read and our write."""
    mine = client(store)
    other_io = StoreIO(store, OTHER)
    stolen: list[int] = []

    async def steal(offset: int, data: bytes) -> None:
        if not stolen and data[:4] == b"SDCB":
            cmd = Command(SLOW, 0xBEEF, {"seconds": 0.2}).encode()
            await other_io.write(offset, cmd + bytes(-len(cmd) % 512))
            stolen.append(offset // store.slot_size)

    mine.io.before_write = steal  # type: ignore[attr-defined]
    r = await mine.run(1, {"k": "v"})
    assert r.ok and r.data["echo"] == {"k": "v"}
    assert stolen and r.slot != stolen[0]
    await store.wait_idle()


async def test_same_initiator_overwrite_retries_with_the_same_tag(store: CommandDeviceStore) -> None:
    """Two hostctl processes of one host (same initiator) pick the same slot; the second write
    replaces the first. The first sees a foreign tag, retries elsewhere with its own tag, and the
    array shows it the result of its command without running it twice."""
    mine = client(store, rng=random.Random(1))
    twin_io = StoreIO(store, HOST)
    seen: list[int] = []

    async def twin_writes_over_us(offset: int, data: bytes) -> None:
        if data[:4] == b"SDCB" and not seen:
            seen.append(offset)
            asyncio.get_running_loop().call_soon(asyncio.ensure_future, overwrite(offset))

    async def overwrite(offset: int) -> None:
        cmd = Command(1, 0xABCDEF, {"twin": True}).encode()
        await twin_io.write(offset, cmd + bytes(-len(cmd) % 512))

    mine.io.before_write = twin_writes_over_us  # type: ignore[attr-defined]
    executed = store.executed
    r = await mine.run(SLOW, {"seconds": 0.05})
    assert r.ok and r.data == {"slept": 0.05}
    assert store.executed - executed == 2  # ours once, the twin's once
    await store.wait_idle()


async def test_timeout_raises_and_frees_the_slot(store: CommandDeviceStore) -> None:
    c = client(store)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(CommandTimeout, match="did not complete within 0.2s") as e:
        await c.run(SLOW, {"seconds": 3}, timeout=0.2)
    assert e.value.exit_code == EXIT_TIMEOUT == 4
    assert loop.time() - t0 < 1.0
    assert store.slot_info() == []  # released while PENDING
    store.close()


async def test_all_slots_busy_times_out() -> None:
    store = make_store(size=3 * 4096 * 2, slot_size=8192)  # 2 slots
    other = StoreIO(store, OTHER)
    for slot in (1, 2):
        cmd = Command(SLOW, slot, {"seconds": 5}).encode()
        await other.write(slot * 8192, cmd + bytes(-len(cmd) % 512))
    with pytest.raises(CommandTimeout, match="no free command slot"):
        await client(store).run(1, {}, timeout=0.2)
    store.close()


async def test_busy_array_is_retried_until_it_can_take_the_command() -> None:
    store = make_store(max_running=1)
    slow = asyncio.ensure_future(client(store, OTHER).run(SLOW, {"seconds": 0.2}))
    await asyncio.sleep(0.02)
    r = await client(store).run(1, {"after": "busy"}, timeout=5)
    assert r.ok
    assert (await slow).ok
    store.close()


async def test_busy_until_the_deadline_reports_busy() -> None:
    store = make_store(max_running=0)
    with pytest.raises((ArrayError, CommandTimeout)) as e:
        await client(store).run(1, {}, timeout=0.1)
    assert "busy" in str(e.value).lower()
    store.close()


@pytest.mark.parametrize(
    "status,code",
    [
        ("FAILED", EXIT_ARRAY),
        ("WRONG_STATE", EXIT_ARRAY),
        ("UNREACHABLE", EXIT_UNREACHABLE),
        ("NOT_ALLOWED", EXIT_ARRAY),
    ],
)
async def test_statuses_map_to_exit_codes_and_keep_the_array_text(
    store: CommandDeviceStore, status: str, code: int
) -> None:
    with pytest.raises(ArrayError) as e:
        await client(store, array="site-b").run(FAIL, {"status": status, "message": "link to site-b is down"})
    assert e.value.status == ResultStatus[status]
    assert e.value.exit_code == code
    assert str(e.value) == f"site-b: {status}: fail: link to site-b is down"


async def test_check_false_returns_the_response(store: CommandDeviceStore) -> None:
    r = await client(store).run(FAIL, {"status": "WRONG_STATE", "message": "pair is suspended"}, check=False)
    assert not r.ok and r.status == ResultStatus.WRONG_STATE and "pair is suspended" in r.error
    assert store.slot_info() == []


async def test_not_allowed_names_the_initiator() -> None:
    store = make_store(allowed=("iqn.2026-11.test:good",))
    with pytest.raises(ArrayError) as e:
        await client(store, "iqn.2026-11.test:bad").run(1, {})
    assert e.value.status == ResultStatus.NOT_ALLOWED and e.value.exit_code == 1
    assert "NOT_ALLOWED" in str(e.value) and "iqn.2026-11.test:bad" in str(e.value)
    assert (await client(store, "iqn.2026-11.test:good").run(1, {})).ok
    store.close()


async def test_bad_block_is_a_protocol_error(store: CommandDeviceStore) -> None:
    c = client(store)

    def corrupt(data: bytes) -> bytes:
        if data[:4] != b"SDCB":
            return data
        return data[:24] + bytes(4) + data[28:]  # CRC zeroed

    c.io.mangle = corrupt  # type: ignore[attr-defined]
    with pytest.raises(ArrayError) as e:
        await c.run(1, {"x": 1})
    assert e.value.status == ResultStatus.BAD_BLOCK and e.value.exit_code == EXIT_PROTOCOL
    assert "checksum" in str(e.value)
    assert store.slot_info() == []


async def test_unknown_process_lists_the_known_ones(store: CommandDeviceStore) -> None:
    with pytest.raises(ArrayError) as e:
        await client(store).run(999, {})
    assert e.value.status == ResultStatus.UNKNOWN_PROCESS and e.value.exit_code == 1
    assert "999" in str(e.value) and "echo" in str(e.value)


async def test_duplicate_tag_after_release(store: CommandDeviceStore) -> None:
    c = client(store, rng=random.Random(7))
    r = await c.run(1, {})
    c.rng = random.Random(7)  # the same tag again
    with pytest.raises(ArrayError) as e:
        await c.run(1, {})
    assert e.value.status == ResultStatus.DUPLICATE
    assert r.ok


async def test_not_a_command_device() -> None:
    c = CommandDeviceClient(StoreIO(MemoryBackstore(1 << 20)), initiator=HOST)
    with pytest.raises(ProtocolError, match="not a command device") as e:
        await c.run(1, {})
    assert e.value.exit_code == EXIT_PROTOCOL == 5


async def test_garbage_in_a_slot_is_a_protocol_error() -> None:
    """A device with a valid directory whose slots hold something else (a LUN formatted by hand)."""
    from storaged.cmddev.block import Directory

    mem = MemoryBackstore(1 << 20)
    await mem.write(0, Directory(8192, 10, [SlotState.FREE] * 10).encode().ljust(512, b"\0"))
    c = CommandDeviceClient(StoreIO(mem), initiator=HOST)
    with pytest.raises(ProtocolError, match="not a command device"):
        await c.run(1, {}, timeout=5)
    c.io.mangle = lambda data: b"\xff" * len(data)  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="holds no response block"):
        await c.run(1, {}, timeout=5)


async def test_concurrent_clients_of_many_initiators(store: CommandDeviceStore) -> None:
    clients = [client(store, f"iqn.2026-11.test:h{i % 5}") for i in range(40)]
    results = await asyncio.gather(*(c.run(1, {"i": i}) for i, c in enumerate(clients)))
    assert [r.data["echo"]["i"] for r in results] == list(range(40))
    assert store.slot_info() == []


async def test_directory_shows_own_slots_and_others(store: CommandDeviceStore) -> None:
    other = StoreIO(store, OTHER)
    cmd = Command(SLOW, 5, {"seconds": 0.1}).encode()
    await other.write(3 * store.slot_size, cmd + bytes(-len(cmd) % 512))
    d = decode_directory(await StoreIO(store).read(0, 4096))
    assert d.states[2] == SlotState.BUSY_OTHER
    resp = decode_response(await other.read(3 * store.slot_size, 4096))
    assert resp.state == SlotState.PENDING
    await store.wait_idle()


def test_parse_process_names_and_numbers() -> None:
    assert parse_process("ECHO") == 1
    assert parse_process("array-info") == 2
    assert parse_process("link_status") == 3
    assert parse_process("4") == 4 and parse_process("0x10") == 16
    assert process_name(2) == "ARRAY_INFO" and process_name(77) == "77"
    with pytest.raises(UsageError, match="unknown process"):
        parse_process("frobnicate")
    with pytest.raises(UsageError, match="out of range"):
        parse_process("70000")


async def test_same_initiator_overwrite_of_a_finished_command_reports_duplicate(
    store: CommandDeviceStore,
) -> None:
    """If the replaced command had already finished, its result is gone: the retry with the same
    tag is not run again (DUPLICATE), and the message says what happened."""
    mine = client(store)
    twin_io = StoreIO(store, HOST)

    async def twin_writes_over_us_after_we_ran(offset: int, data: bytes) -> None:
        if data[:4] == b"SDCB" and mine.io.after_write is not None:  # type: ignore[attr-defined]
            mine.io.after_write = None  # type: ignore[attr-defined]
            await store.wait_idle()  # our ECHO has finished
            cmd = Command(SLOW, 0xABCDEF, {"seconds": 0.05}).encode()
            await twin_io.write(offset, cmd + bytes(-len(cmd) % 512))

    mine.io.after_write = twin_writes_over_us_after_we_ran  # type: ignore[attr-defined]
    with pytest.raises(ArrayError) as e:
        await mine.run(1, {})
    assert e.value.status == ResultStatus.DUPLICATE and e.value.exit_code == 1
    assert "replaced it in its slot" in str(e.value)
    await store.wait_idle()

"""CommandDispatcher and the array command set, without a store."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from storaged.cmddev.block import Command, ResultStatus, SlotState
from storaged.cmddev.commands import Process, build_dispatcher
from storaged.cmddev.dispatch import MAX_ERROR_TEXT, CommandDispatcher, CommandError

from .conftest import H1, FakeControl


def test_register_forms_and_conflicts() -> None:
    d = CommandDispatcher()

    @d.register(16, "pair_create")
    async def pair_create(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return {}

    def pair_split(params: dict[str, Any], origin: str) -> None:
        return None

    assert d.register(17, "pair_split", pair_split) is pair_split
    assert d.processes == {16: "pair_create", 17: "pair_split"}
    assert d.name_of(16) == "pair_create" and d.name_of(3) is None
    assert 16 in d and 3 not in d
    with pytest.raises(ValueError, match="already registered"):
        d.register(16, "other", pair_split)
    with pytest.raises(ValueError, match="already registered"):
        d.register(18, "pair_split", pair_split)
    with pytest.raises(ValueError, match="does not fit"):
        d.register(70000, "too_big", pair_split)


async def test_results_and_edited_data_flag() -> None:
    d = CommandDispatcher()
    d.register(1, "sync", lambda p, o: {"p": p, "o": o})

    @d.register(2, "async_none")
    async def none(params: dict[str, Any], origin: str) -> None:
        return None

    r = await d.execute(Command(1, 5, {"a": 1}), H1)
    assert (r.state, r.tag, r.process, r.status, r.error, r.data) == (
        SlotState.DONE, 5, 1, ResultStatus.OK, "", {"p": {"a": 1}, "o": H1})
    r = await d.execute(Command(1, 6, {"a": 1}, edited_data=False), H1)
    assert (r.status, r.data) == (ResultStatus.OK, None)
    assert (await d.execute(Command(2, 7), H1)).data == {}
    assert (await d.execute(Command(2, 7, edited_data=False), H1)).data is None


@pytest.mark.parametrize("exc,status,text", [
    (CommandError(ResultStatus.WRONG_STATE, "pair is split"), ResultStatus.WRONG_STATE, "h: pair is split"),
    (CommandError(ResultStatus.UNREACHABLE, "site-a is down"), ResultStatus.UNREACHABLE, "site-a is down"),
    (KeyError("lun"), ResultStatus.BAD_PARAMETER, "missing or unknown parameter 'lun'"),
    (ValueError("lun must be >= 0"), ResultStatus.BAD_PARAMETER, "bad parameter: lun must be >= 0"),
    (TypeError("expected int"), ResultStatus.BAD_PARAMETER, "expected int"),
    (ValueError(), ResultStatus.BAD_PARAMETER, "ValueError"),
    (RuntimeError("journal volume full"), ResultStatus.FAILED, "h: RuntimeError: journal volume full"),
    (OSError(28, "No space left on device"), ResultStatus.FAILED, "No space left"),
    (ZeroDivisionError(), ResultStatus.FAILED, "ZeroDivisionError"),
])
async def test_exceptions_become_statuses(exc: Exception, status: ResultStatus, text: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    d = CommandDispatcher()

    def handler(params: dict[str, Any], origin: str) -> None:
        raise exc

    d.register(1, "h", handler)
    with caplog.at_level(logging.INFO, logger="storaged.cmddev.dispatch"):
        r = await d.execute(Command(1, 1), H1)
    assert (r.state, r.status, r.tag) == (SlotState.DONE, status, 1)
    assert text in r.error
    if status == ResultStatus.FAILED:  # the traceback is logged
        assert any(rec.exc_info for rec in caplog.records)


async def test_command_error_data_only_when_asked() -> None:
    d = CommandDispatcher()

    def handler(params: dict[str, Any], origin: str) -> None:
        raise CommandError(ResultStatus.WRONG_STATE, "no", {"state": "COPY"})

    d.register(1, "h", handler)
    assert (await d.execute(Command(1, 1), H1)).data == {"state": "COPY"}
    assert (await d.execute(Command(1, 1, edited_data=False), H1)).data is None


async def test_bad_handler_results_fail_cleanly() -> None:
    d = CommandDispatcher()
    d.register(1, "list", lambda p, o: [1, 2])
    d.register(2, "set", lambda p, o: {"s": {1, 2}})
    d.register(3, "nan", lambda p, o: {"x": float("nan")})
    d.register(4, "long_error", lambda p, o: (_ for _ in ()).throw(RuntimeError("e" * 100000)))
    r = await d.execute(Command(1, 1), H1)
    assert r.status == ResultStatus.FAILED and "not an object" in r.error
    r = await d.execute(Command(2, 1), H1)
    assert r.status == ResultStatus.FAILED and "not JSON" in r.error
    assert (await d.execute(Command(3, 1), H1)).status == ResultStatus.FAILED
    assert (await d.execute(Command(2, 1, edited_data=False), H1)).status == ResultStatus.OK
    r = await d.execute(Command(4, 1), H1)
    assert r.status == ResultStatus.FAILED and len(r.error) == MAX_ERROR_TEXT


async def test_unknown_process_lists_known_ones() -> None:
    d = build_dispatcher(FakeControl())
    r = await d.execute(Command(16, 3), H1)
    assert (r.status, r.process, r.tag) == (ResultStatus.UNKNOWN_PROCESS, 16, 3)
    assert r.error == ("unknown process number 16; this array knows: 1 (echo), 2 (array_info), "
                       "3 (link_status), 4 (lun_list)")
    r = await CommandDispatcher().execute(Command(1, 1), H1)
    assert "knows: none" in r.error


def test_process_numbers_are_stable() -> None:
    # on-disk numbers: hosts and arrays of different versions must agree on them
    assert {p.name: int(p) for p in Process} == {
        "ECHO": 1, "ARRAY_INFO": 2, "LINK_STATUS": 3, "LUN_LIST": 4, "PAIR_CREATE": 16, "PAIR_DISPLAY": 17,
        "PAIR_SPLIT": 18, "PAIR_RESYNC": 19, "PAIR_DELETE": 20, "JOURNAL_STATUS": 21, "JOURNAL_ACQUIRE": 22,
        "JOURNAL_RESTORE": 23, "JOURNAL_PURGE": 24, "PAIR_SYNCWAIT": 25, "TAKEOVER": 26,
        "PAIR_RELEASE": 27}


async def test_command_set() -> None:
    control = FakeControl()
    d = build_dispatcher(control)
    assert d.processes == {1: "echo", 2: "array_info", 3: "link_status", 4: "lun_list"}
    assert (await d.execute(Command(Process.ECHO, 1, {"x": [1, "a"]}), H1)).data == {"echo": {"x": [1, "a"]}}
    assert (await d.execute(Command(Process.ARRAY_INFO, 1), H1)).data == control.array_info()
    assert (await d.execute(Command(Process.LINK_STATUS, 1), H1)).data == control.link_status()
    assert (await d.execute(Command(Process.LUN_LIST, 1), H1)).data == {"luns": control.array_info()["luns"]}


async def test_command_set_with_async_control() -> None:
    class AsyncControl:
        async def array_info(self) -> dict[str, Any]:
            return FakeControl().array_info()

        async def link_status(self) -> dict[str, Any]:
            raise ConnectionError("link manager not started")

    d = build_dispatcher(AsyncControl())
    assert len((await d.execute(Command(Process.LUN_LIST, 1), H1)).data["luns"]) == 2
    r = await d.execute(Command(Process.LINK_STATUS, 1), H1)
    assert r.status == ResultStatus.FAILED and "link manager not started" in r.error

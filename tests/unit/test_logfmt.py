"""storaged.logfmt: JSON lines with context fields taken from context variables, never the message."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storaged.logfmt import LOG_FIELDS, ContextFilter, JsonFormatter, note, with_log_fields
from storaged.origin import ORIGIN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logfmt")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Conn:
    def __init__(self) -> None:
        self.log_fields: dict[str, Any] = {}

    @with_log_fields
    def handle(self, logger: logging.Logger, initiator: str | None = None) -> None:
        if initiator:
            note(initiator=initiator, target="iqn.2026-11.io.storaged:t")
        logger.info("handled")


def test_fields_come_from_the_connection_being_served_and_end_with_its_call(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    a, b = Conn(), Conn()
    a.handle(logger, "iqn.2026-11.test:a")
    b.handle(logger, "iqn.2026-11.test:b")
    a.handle(logger)  # a remembers what its login noted
    logger.info("between calls")  # about no connection: no fields left behind
    got = lines(stream)
    assert [x.get("initiator") for x in got] == ["iqn.2026-11.test:a", "iqn.2026-11.test:b",
                                                 "iqn.2026-11.test:a", None]
    assert got[0]["target"] == "iqn.2026-11.io.storaged:t" and "target" not in got[3]
    assert LOG_FIELDS.get() is None


def test_line_shape_extra_origin_and_exception(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    logger.warning("lun %d of %s", 3, "x", extra={"lun": 3})
    token = ORIGIN.set("site-a/iqn.2026-11.test:h")
    try:
        logger.info("forwarded")
    finally:
        ORIGIN.reset(token)
    token = ORIGIN.set("iqn.2026-11.test:h")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logger.exception("failed\non two lines")
    finally:
        ORIGIN.reset(token)
    raw = stream.getvalue().splitlines()
    assert len(raw) == 3  # one line each, tracebacks and newlines escaped
    first, forwarded, failed = (json.loads(line) for line in raw)
    assert first["level"] == "WARNING" and first["logger"] == "test.logfmt" and first["message"] == "lun 3 of x"
    assert first["lun"] == 3 and first["ts"].endswith("Z")
    assert forwarded["origin"] == "site-a/iqn.2026-11.test:h" and "initiator" not in forwarded
    assert failed["initiator"] == "iqn.2026-11.test:h" and failed["message"] == "failed\non two lines"
    assert "ZeroDivisionError" in failed["exc"] and "Traceback" in failed["exc"]


def test_a_bad_log_call_still_gives_a_json_line() -> None:
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "bad %d arguments", ("x",), None)
    assert "bad %d arguments" in json.loads(JsonFormatter().format(record))["message"]


async def test_tasks_started_inside_a_call_inherit_its_fields(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured

    class Server(Conn):
        @with_log_fields
        def spawn(self) -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(self.later())

        async def later(self) -> None:
            await asyncio.sleep(0)
            logger.info("in the task")

    s = Server()
    s.log_fields["peer"] = "site-b"
    task = s.spawn()
    logger.info("outside")
    await task
    assert [(x["message"], x.get("peer")) for x in lines(stream)] == [("outside", None), ("in the task", "site-b")]


def test_cli_rejects_an_unknown_log_format() -> None:
    r = subprocess.run([sys.executable, "-m", "storaged", "--log-format", "xml"], capture_output=True, text=True,
                       cwd=str(REPO), timeout=60, check=False)
    assert r.returncode == 2 and "--log-format" in r.stderr and "Traceback" not in r.stderr


def test_an_uncaught_exception_is_one_json_line() -> None:
    code = ("import sys; from storaged.logfmt import setup; setup('json', 'INFO', sys.stderr); "
            "raise RuntimeError('boom')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), timeout=60,
                       check=False)
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()
    obj = json.loads(line)
    assert obj["level"] == "CRITICAL" and "boom" in obj["message"] and "RuntimeError: boom" in obj["exc"]

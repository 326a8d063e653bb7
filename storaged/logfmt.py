"""Log output for people (text) or for log shippers (``--log-format json``: one object per line).

The JSON lines carry who the line is about as fields, not only in the message: ``initiator``,
``target``, ``lun``, ``peer``, ``group`` (and ``origin`` for a request forwarded by a peer array).
They come from the place that knows them, never from parsing the message:

* :data:`LOG_FIELDS`, a context variable holding the fields of the connection being served. The
  iSCSI connection and the remote link set it, scoped to each call into them
  (:func:`with_log_fields`); tasks they create meanwhile inherit it, as asyncio copies the context.
  Code that learns a field on the way (the login learning the initiator's name) adds it with
  :func:`note`. Scoped rather than left set: under uvloop the protocol callbacks of all
  connections share one context, so a field left behind would label the next connection's lines.
* :data:`storaged.origin.ORIGIN`, set per SCSI command and per request from a peer: the initiator
  when it is a plain name, else ``origin`` (``peer/initiator``).
* ``extra={"lun": 3}`` on a log call.

Exceptions become an ``exc`` field (the formatted traceback), so a line never spans lines.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TextIO, TypeVar

from .origin import ORIGIN

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: the context fields a JSON line may carry, in this order
CONTEXT_KEYS = ("initiator", "target", "lun", "peer", "group")

#: the log fields of the connection (or link) being served now; None outside any
LOG_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("storaged_log_fields", default=None)

P = ParamSpec("P")
R = TypeVar("R")


class HasLogFields(Protocol):
    log_fields: dict[str, Any]


S = TypeVar("S", bound=HasLogFields)


def with_log_fields(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run ``method`` with its object's ``log_fields`` as :data:`LOG_FIELDS` (reset afterwards)."""

    @functools.wraps(method)
    def scoped(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        token = LOG_FIELDS.set(self.log_fields)
        try:
            return method(self, *args, **kwargs)
        finally:
            LOG_FIELDS.reset(token)

    return scoped


def note(**fields: Any) -> None:
    """Add fields to the current log context (in place: the connection keeps them)."""
    current = LOG_FIELDS.get()
    if current is not None:
        current.update(fields)


def context_fields(record: logging.LogRecord | None = None) -> dict[str, Any]:
    """The context fields known now (and on ``record``, from ``extra=``), unknown ones left out."""
    out: dict[str, Any] = {}
    current = LOG_FIELDS.get() or {}
    for key in CONTEXT_KEYS:
        value = getattr(record, key, None) if record is not None else None
        if value is None:
            value = current.get(key)
        if value is not None and value != "":
            out[key] = value
    origin = ORIGIN.get()
    if origin:
        if "/" in origin:
            out["origin"] = origin
        else:
            out.setdefault("initiator", origin)
    return out


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record where it is made (same thread, same context),
    so formatting later, or elsewhere, still sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.log_context = context_fields(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, the context fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad log call still gives one parseable line
            message = f"{record.msg!r} (bad log arguments {record.args!r}: {exc})"
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        fields = getattr(record, "log_context", None)
        line.update(fields if isinstance(fields, dict) else context_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup(fmt: str = "text", level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record (and Python warnings) to ``stream`` (stderr) in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.addFilter(ContextFilter())
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    if fmt == "json":  # a crash, too, is one JSON line (with exc), not a bare traceback
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("storaged").critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))

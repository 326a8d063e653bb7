"""Runs the commands written to a command device: process number -> handler (spec Fig. 7, S902-S904).

The dispatcher knows nothing of slots, blocks or LUNs: it takes a decoded :class:`Command` and the
origin that issued it and returns a :class:`Response` in state DONE. Every failure becomes a result
status the host can act on, never an exception out of :meth:`CommandDispatcher.execute`:

* a handler raising :class:`CommandError` -> that status and message (e.g. WRONG_STATE);
* ``KeyError`` / ``ValueError`` / ``TypeError`` -> BAD_PARAMETER (the input parameter did not fit);
* anything else -> FAILED with the exception text (the traceback goes to the log);
* an unknown process number -> UNKNOWN_PROCESS, listing the known ones.

A handler is ``handler(params: dict, origin: str)`` returning a JSON object (or None), plain or as
a coroutine. Each command is one ``register`` call::

    @dispatcher.register(Process.ECHO, "echo")
    async def echo(params, origin):
        return {"echo": params}
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .block import Command, Response, ResultStatus, SlotState

log = logging.getLogger(__name__)

#: what a handler returns: the edited data (a JSON object), or None for "no edited data"
HandlerResult = dict[str, Any] | None
Handler = Callable[[dict[str, Any], str], HandlerResult | Awaitable[HandlerResult]]

#: error texts longer than this are cut: they travel in a slot next to the edited data
MAX_ERROR_TEXT = 2048


class CommandError(Exception):
    """Raised by a handler to answer with a specific status (and, optionally, edited data)."""

    def __init__(self, status: ResultStatus, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = ResultStatus(status)
        self.message = message
        self.data = data


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


def _exc_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CommandDispatcher:
    """The table of commands an array understands: process number -> (name, handler)."""

    def __init__(self) -> None:
        self._table: dict[int, tuple[str, Handler]] = {}

    # --- the table ---------------------------------------------------------------------------

    def register(self, process: int, name: str, handler: Handler | None = None) -> Any:
        """Add a command. With ``handler`` it is registered at once (and returned); without, this
        is a decorator. A process number or name may be registered only once."""
        process = int(process)
        if not 0 <= process <= 0xFFFF:
            raise ValueError(f"process number {process} does not fit the command block (0..65535)")

        def add(fn: Handler) -> Handler:
            if process in self._table:
                raise ValueError(f"process {process} is already registered as {self._table[process][0]!r}")
            if any(n == name for n, _h in self._table.values()):
                raise ValueError(f"a command named {name!r} is already registered")
            self._table[process] = (name, fn)
            return fn

        if handler is not None:
            return add(handler)
        return add

    def name_of(self, process: int) -> str | None:
        entry = self._table.get(int(process))
        return entry[0] if entry else None

    @property
    def processes(self) -> dict[int, str]:
        """process number -> name, in number order."""
        return {p: self._table[p][0] for p in sorted(self._table)}

    def __contains__(self, process: object) -> bool:
        return process in self._table

    # --- running a command -------------------------------------------------------------------

    def _known(self) -> str:
        return ", ".join(f"{p} ({n})" for p, n in self.processes.items()) or "none"

    async def execute(self, command: Command, origin: str) -> Response:
        """Run ``command`` for ``origin``; always returns a DONE response, never raises
        (except CancelledError when the array shuts down)."""

        def answer(status: ResultStatus, error: str = "", data: dict[str, Any] | None = None) -> Response:
            return Response(SlotState.DONE, command.tag, command.process, status, _clip(error),
                            data if command.edited_data else None)

        entry = self._table.get(command.process)
        if entry is None:
            log.info("command device: %s sent unknown process %d (tag %#x)", origin or "?", command.process,
                     command.tag)
            return answer(ResultStatus.UNKNOWN_PROCESS,
                          f"unknown process number {command.process}; this array knows: {self._known()}")
        name, handler = entry
        try:
            result = handler(command.params, origin)
            if inspect.isawaitable(result):
                result = await result
        except CommandError as exc:
            log.info("command device: %s %s (tag %#x) -> %s: %s", origin or "?", name, command.tag,
                     exc.status.name, exc.message)
            return answer(exc.status, f"{name}: {exc.message}", exc.data)
        except (KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, KeyError) and exc.args:
                text = f"missing or unknown parameter {exc.args[0]!r}"
            else:
                text = _exc_text(exc) if not str(exc) else str(exc)
            log.info("command device: %s %s (tag %#x) -> BAD_PARAMETER: %s", origin or "?", name, command.tag,
                     text, exc_info=log.isEnabledFor(logging.DEBUG))
            return answer(ResultStatus.BAD_PARAMETER, f"{name}: bad parameter: {text}")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status for the host
            log.exception("command device: %s %s (tag %#x) failed", origin or "?", name, command.tag)
            return answer(ResultStatus.FAILED, f"{name}: {_exc_text(exc)}")

        if result is None:
            result = {}
        if not isinstance(result, dict):
            log.error("command device: handler %s returned %s, not a JSON object", name,
                      type(result).__name__)
            return answer(ResultStatus.FAILED, f"{name}: the array produced no valid edited data "
                                               f"({type(result).__name__}, not an object)")
        if command.edited_data:
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError, RecursionError) as exc:
                log.error("command device: handler %s returned data that is not JSON: %s", name, exc)
                return answer(ResultStatus.FAILED, f"{name}: the array produced edited data that is not "
                                                   f"JSON: {exc}")
        log.debug("command device: %s %s (tag %#x) -> OK", origin or "?", name, command.tag)
        return answer(ResultStatus.OK, "", result)

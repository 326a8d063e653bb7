"""Process numbers and their names (Fig. 6): the table shared with the array, and the host's
parsing and naming of them for the command line and for messages."""

from __future__ import annotations

from storaged.cmddev.commands import Process as ArrayProcess

from .errors import UsageError

#: process numbers (Fig. 6 "process number") by name: one table, shared with the array
Process = ArrayProcess


def process_names() -> dict[str, int]:
    """Name -> number of every process the command device interface defines."""
    return {p.name: int(p) for p in Process}


def parse_process(text: str) -> int:
    """``ARRAY_INFO``, ``array-info``, ``2`` or ``0x2`` -> 2."""
    t = text.strip()
    try:
        n = int(t, 0)
    except ValueError:
        names = process_names()
        key = t.upper().replace("-", "_")
        if key not in names:
            raise UsageError(
                f"unknown process {text!r} (known: {', '.join(sorted(names))}, or a number)"
            ) from None
        return names[key]
    if not 0 <= n <= 0xFFFF:
        raise UsageError(f"process number {n} is out of range 0..65535")
    return n


def process_name(number: int) -> str:
    for name, n in process_names().items():
        if n == number:
            return name
    return str(number)


def _without_name(error: str, process: int) -> str:
    """storaged's dispatcher puts the command's registered name before a handler's message
    (``PAIR_SPLIT: group g1 is in PSUS; ...``); the host message already says which command ran, so
    a leading name equal to the process's own name is dropped."""
    name, sep, rest = error.partition(": ")
    if sep and rest and name.strip().upper().replace("-", "_") == process_name(process):
        return rest
    return error


def _label(process: int) -> str:
    name = process_name(process)
    return f"process {process}" if name == str(process) else name

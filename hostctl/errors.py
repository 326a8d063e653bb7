"""Errors hostctl reports, each carrying the exit code the CLI documents.

=====  ==========================================================================
 0     ok
 1     the array answered with an error (its status name and error text)
 2     usage or configuration error
 3     unreachable: connection refused, login failed, no such device, link down
 4     timeout: no DONE within ``--timeout``
 5     protocol error: not a command device, a block that does not parse
=====  ==========================================================================

Every message is one line meant for a person; the CLI prints it as ``hostctl: <message>``.
"""

from __future__ import annotations

from storaged.cmddev.block import ResultStatus

EXIT_OK = 0
EXIT_ARRAY = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_PROTOCOL = 5


class HostctlError(Exception):
    """Base of every error hostctl reports; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_ARRAY


class UsageError(HostctlError):
    """Bad command line or parameters."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration problem, phrased as 'FILE: field.path: what is wrong'."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


class UnreachableError(HostctlError):
    """The command device (or the array behind it) cannot be reached."""

    exit_code = EXIT_UNREACHABLE


class CommandTimeout(HostctlError):
    """The array did not finish the command within the timeout."""

    exit_code = EXIT_TIMEOUT


class ProtocolError(HostctlError):
    """The device does not speak the command device protocol (or sent a block that does not parse)."""

    exit_code = EXIT_PROTOCOL


class PairStateError(HostctlError):
    """A pair group ended up in a state the command did not want (PSUE, SMPL, a BROKEN sync wait).

    The array answered OK, so this is not an :class:`ArrayError`; the message carries the array's
    own reason (the group's ``error``) when it gave one.
    """

    exit_code = EXIT_ARRAY


#: What each result status means, for a person (used when the array sent no error text).
STATUS_TEXT: dict[ResultStatus, str] = {
    ResultStatus.OK: "ok",
    ResultStatus.BAD_BLOCK: "the array could not parse the command block",
    ResultStatus.UNKNOWN_PROCESS: "the array has no command with this process number",
    ResultStatus.BAD_PARAMETER: "the input parameter is not what the command needs",
    ResultStatus.NOT_ALLOWED: "this initiator may not issue commands on this command device",
    ResultStatus.FAILED: "the command failed",
    ResultStatus.WRONG_STATE: "the object is in a state where this is not allowed",
    ResultStatus.UNREACHABLE: "a peer array needed by the command cannot be reached",
    ResultStatus.DUPLICATE: "this command was already executed and its result released",
    ResultStatus.BUSY: "the array cannot take the command now",
}

#: Exit code per result status: the array answered, so 1, except where another code says more.
STATUS_EXIT: dict[ResultStatus, int] = {
    ResultStatus.BAD_BLOCK: EXIT_PROTOCOL,
    ResultStatus.UNREACHABLE: EXIT_UNREACHABLE,
}


class ArrayError(HostctlError):
    """The array executed (or refused) the command and answered with a non-OK status.

    The message is ``<array>: <STATUS NAME>: <the array's error text>``, e.g.
    ``site-b: NOT_ALLOWED: initiator 'site-a/iqn...' may not issue commands on this command device``.
    """

    def __init__(
        self, array: str, status: ResultStatus, error: str, process: int = 0, data: dict | None = None
    ) -> None:
        self.array = array
        self.status = status
        self.error = error
        self.process = process
        self.data = data
        self.exit_code = STATUS_EXIT.get(status, EXIT_ARRAY)
        text = " ".join(error.split()) or STATUS_TEXT.get(status, "")
        prefix = f"{array}: " if array else ""
        super().__init__(f"{prefix}{status.name}: {text}" if text else f"{prefix}{status.name}")

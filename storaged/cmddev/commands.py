"""The commands a command device understands, by process number (spec Fig. 6 "process number").

Numbers 1-15 are array-wide queries; the pair (replication) commands start at 16. A number, once
published, keeps its meaning: hosts hard-code them. ``docs/command-device.md`` lists the input
parameter and edited data of each.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, Protocol, TypedDict

from .dispatch import CommandDispatcher


class Process(enum.IntEnum):
    ECHO = 1  # returns its input: checks the path host -> (peer array ->) command device
    ARRAY_INFO = 2  # the array, its LUNs, LUN map, command devices and links
    LINK_STATUS = 3  # the links to peer arrays
    LUN_LIST = 4  # just the LUNs of ARRAY_INFO
    # remote copy (docs/replication.md), registered by storaged.repl.commands
    PAIR_CREATE = 16
    PAIR_DISPLAY = 17
    PAIR_SPLIT = 18
    PAIR_RESYNC = 19
    PAIR_DELETE = 20
    JOURNAL_STATUS = 21
    JOURNAL_ACQUIRE = 22
    JOURNAL_RESTORE = 23
    JOURNAL_PURGE = 24
    PAIR_SYNCWAIT = 25
    TAKEOVER = 26
    PAIR_RELEASE = 27  # lift a primary's fence by hand (the peer cannot confirm its role)


# --- what ArrayControl returns (documentation for the implementer; plain dicts at run time) ------

class LunMapEntry(TypedDict):
    array: str  # the peer array serving the volume behind a virtual LUN
    target: str
    lun: int
    state: str  # e.g. "up", "down"


class LunInfo(TypedDict):
    target: str
    lun: int
    size: int  # bytes
    block_size: int
    type: str  # "data" | "command_device" | "virtual"
    thin: bool
    naa: str
    serial: str
    map: LunMapEntry | None  # for virtual LUNs: what they map to


class CommandDeviceRef(TypedDict):
    array: str
    target: str
    lun: int


class LinkInfo(TypedDict):
    peer: str
    address: str
    state: str
    since: float
    rtt_ms: float | None
    reconnects: int
    last_error: str | None
    inflight: int


class ArrayInfo(TypedDict):
    array: str
    uuid: str
    version: str
    luns: list[LunInfo]
    lun_map: list[dict[str, Any]]
    command_devices: list[CommandDeviceRef]  # Fig. 5: the command device management table
    links: list[LinkInfo]


class LinkStatus(TypedDict):
    links: list[LinkInfo]


class ArrayControl(Protocol):
    """What the command set needs from the daemon (the lead implements it). Methods may be plain
    or coroutines."""

    def array_info(self) -> dict[str, Any]: ...

    def link_status(self) -> dict[str, Any]: ...


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def build_dispatcher(control: ArrayControl) -> CommandDispatcher:
    """The dispatcher for one array: every command is one ``register``."""
    d = CommandDispatcher()

    @d.register(Process.ECHO, "echo")
    def echo(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return {"echo": params}

    @d.register(Process.ARRAY_INFO, "array_info")
    async def array_info(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return dict(await _value(control.array_info()))

    @d.register(Process.LINK_STATUS, "link_status")
    async def link_status(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return dict(await _value(control.link_status()))

    @d.register(Process.LUN_LIST, "lun_list")
    async def lun_list(params: dict[str, Any], origin: str) -> dict[str, Any]:
        return {"luns": (await _value(control.array_info()))["luns"]}

    return d

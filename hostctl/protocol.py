"""One command on one command device (spec Fig. 7, Fig. 8 S803-S805): :class:`CommandDeviceClient`
reads the directory, claims a FREE slot, writes the command block, polls the slot until DONE,
decodes the :class:`Response` and releases the slot. Which device to use is :mod:`hostctl.client`'s
business (Host); this module only speaks the block protocol over a CommandDeviceIO."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import zlib
from dataclasses import dataclass
from typing import Any

from storaged.cmddev.block import (
    COMMAND_MAGIC,
    DIRECTORY_HEADER,
    RELEASE_MAGIC,
    RESPONSE_HEADER,
    RESPONSE_MAGIC,
    BlockError,
    Command,
    Directory,
    ResultStatus,
    SlotState,
    decode_directory,
    decode_response,
    encode_release,
)

from .device import CommandDeviceIO
from .errors import ArrayError, CommandTimeout, HostctlError, ProtocolError, UnreachableError, UsageError
from .processes import _label, _without_name, process_name

log = logging.getLogger("hostctl")

#: how much of a slot to read first: a response header and small edited data fit in it
FIRST_READ = 4096
POLL_MIN = 0.001
POLL_MAX = 0.1


@dataclass(slots=True)
class Response:
    """A command's outcome as the host read it from its slot."""

    process: int
    tag: int
    state: SlotState
    status: ResultStatus
    error: str = ""
    data: dict[str, Any] | None = None
    #: the slot the command ran in, and the array whose command device it was
    slot: int = 0
    array: str = ""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "array": self.array,
            "process": self.process,
            "process_name": process_name(self.process),
            "slot": self.slot,
            "state": self.state.name,
            "tag": f"{self.tag:016x}",
            "status": self.status.name,
            "error": self.error,
            "data": self.data,
            "elapsed_ms": round(self.elapsed * 1000, 3),
        }


#: slots this process is using, per device name: concurrent runs in one process (same initiator,
#: same pid, so the same preferred slot) must not pick the same FREE slot between their directory
#: read and their write, or the second block would replace the first (the array lets an initiator
#: overwrite its own slot).
_CLAIMED: dict[str, set[int]] = {}


class _Retry(Exception):
    """The slot was taken by someone else (or our command vanished): try another slot."""


def _pad(data: bytes, block_size: int) -> bytes:
    return data + bytes(-len(data) % block_size)


class CommandDeviceClient:
    """Runs commands on one command device, one slot per command.

    ``array`` names the array for messages; ``initiator`` seeds the slot choice, so two hosts (or two
    hostctl processes) start looking for a free slot in different places; ``via`` names the array a
    routed command device is reached through (messages only).
    """

    def __init__(
        self,
        io: CommandDeviceIO,
        *,
        array: str = "",
        initiator: str = "",
        via: str = "",
        rng: random.Random | None = None,
        poll_min: float = POLL_MIN,
        poll_max: float = POLL_MAX,
        max_attempts: int | None = None,
    ) -> None:
        self.io = io
        self.array = array
        self.initiator = initiator
        self.via = via
        self.rng = rng or random.SystemRandom()
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.max_attempts = max_attempts
        self._start = zlib.crc32(f"{initiator}:{os.getpid()}".encode())

    # --- reading the device ------------------------------------------------------------------

    @property
    def where(self) -> str:
        return self.array or self.io.name

    def _io_error(self, exc: HostctlError) -> HostctlError:
        if isinstance(exc, UnreachableError) and self.via:
            if getattr(exc, "comm_failure", False):
                return UnreachableError(
                    f"{self.array}: unreachable: the link from {self.via} to {self.array} is down ({exc})"
                )
            return UnreachableError(f"{self.array}: unreachable through {self.via}: {exc}")
        return exc

    async def directory(self) -> Directory:
        """Slot 0: the geometry and the state of every slot as this initiator sees it."""
        try:
            raw = await self.io.read(0, FIRST_READ)
            if len(raw) >= DIRECTORY_HEADER.size and raw[:4] == b"SDCD":
                slots = DIRECTORY_HEADER.unpack_from(raw)[4]
                need = DIRECTORY_HEADER.size + slots
                if need > len(raw) and slots <= 1 << 20:
                    raw = await self.io.read(0, need)
        except HostctlError as exc:
            raise self._io_error(exc) from None
        try:
            d = decode_directory(raw)
        except BlockError as exc:
            hint = "" if "not a command device" in str(exc) else ": is this LUN a command device?"
            raise ProtocolError(f"{self.io.name}: {exc}{hint}") from None
        bs = self.io.block_size
        if d.slots < 1 or d.slot_size < bs or d.slot_size % bs:
            raise ProtocolError(
                f"{self.io.name}: odd command device geometry: {d.slots} slots of "
                f"{d.slot_size} bytes on {bs}-byte blocks"
            )
        return d

    async def read_slot(self, slot: int, slot_size: int) -> tuple[SlotState, int, Any]:
        """(state, tag, Response-or-None) of one slot; None while it still holds the command block."""
        base = slot * slot_size
        try:
            raw = await self.io.read(base, min(FIRST_READ, slot_size))
            magic = bytes(raw[:4])
            if magic == COMMAND_MAGIC:
                # A command device never shows the command block back (it answers with a response
                # block from the moment the write is accepted): this LUN just stores what it is given.
                raise ProtocolError(
                    f"{self.io.name}: slot {slot} reads back the command block as written: "
                    f"this LUN stores data, it is not a command device"
                )
            if magic == RELEASE_MAGIC:
                return SlotState.FREE, 0, None
            if magic != RESPONSE_MAGIC or len(raw) < RESPONSE_HEADER.size:
                raise ProtocolError(
                    f"{self.io.name}: slot {slot} holds no response block: is this LUN a command device?"
                )
            fields = RESPONSE_HEADER.unpack_from(raw)
            end = RESPONSE_HEADER.size + fields[6] + fields[7]
            if end > slot_size:
                raise ProtocolError(
                    f"{self.io.name}: slot {slot}: response of {end} bytes overruns the {slot_size}-byte slot"
                )
            if end > len(raw):
                raw = await self.io.read(base, end)
        except ProtocolError:
            raise
        except HostctlError as exc:
            raise self._io_error(exc) from None
        try:
            resp = decode_response(raw)
        except (BlockError, ValueError) as exc:
            raise ProtocolError(f"{self.io.name}: slot {slot}: {exc}") from None
        return resp.state, resp.tag, resp

    def _pick(self, d: Directory, avoid: set[int]) -> int | None:
        """The first FREE slot from this initiator's (and process's) start, not one this process is
        already using; slots that collided in this run come last."""
        n = d.slots
        start = self._start % n
        claimed = _CLAIMED.setdefault(self.io.name, set())
        order = [(start + i) % n + 1 for i in range(n)]
        for prefer_untried in (True, False):
            for slot in order:
                if (
                    d.states[slot - 1] == SlotState.FREE
                    and slot not in claimed
                    and not (prefer_untried and slot in avoid)
                ):
                    claimed.add(slot)
                    return slot
        return None

    def _unclaim(self, slot: int) -> None:
        _CLAIMED.get(self.io.name, set()).discard(slot)

    # --- running a command ---------------------------------------------------------------------

    async def run(
        self,
        process: int,
        params: dict[str, Any] | None = None,
        *,
        edited_data: bool = True,
        timeout: float = 30.0,
        check: bool = True,
    ) -> Response:
        """Run one command and return its response.

        With ``check`` (the default) a non-OK status raises :class:`ArrayError`; without, the response
        is returned whatever its status. Raises CommandTimeout, UnreachableError, ProtocolError.
        """
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + timeout
        params = dict(params or {})
        tag = self._new_tag()
        avoid: set[int] = set()
        attempts = 0
        retried = False
        busy_waits = 0
        while True:
            directory = await self.directory()
            block = Command(process, tag, params, edited_data).encode()
            if len(block) > directory.slot_size:
                raise UsageError(
                    f"the input parameter ({len(block) - 32} bytes) does not fit a "
                    f"{directory.slot_size}-byte command slot"
                )
            slot = self._pick(directory, avoid)
            if slot is None:
                busy_waits += 1
                await self._sleep_until(
                    deadline,
                    busy_waits,
                    f"no free command slot on {self.where} (all {directory.slots} busy)",
                    timeout,
                )
                continue
            attempts += 1
            limit = self.max_attempts or 2 * directory.slots + 4
            if attempts > limit:
                raise ProtocolError(f"{self.where}: gave up after {attempts - 1} slot collisions")
            try:
                try:
                    await self.io.write(slot * directory.slot_size, _pad(block, self.io.block_size))
                except HostctlError as exc:
                    raise self._io_error(exc) from None
                resp = await self._wait(slot, directory.slot_size, tag, deadline, timeout, process)
            except _Retry as why:
                log.debug("slot %d: %s; retrying elsewhere", slot, why)
                avoid.add(slot)
                retried = True
                continue
            finally:
                self._unclaim(slot)
            resp.elapsed = loop.time() - t0
            if resp.status == ResultStatus.BUSY and loop.time() < deadline:
                busy_waits += 1
                await self._sleep_until(deadline, busy_waits, f"{self.where} is busy", timeout)
                tag = self._new_tag()  # BUSY means not executed: a fresh tag is safe
                continue
            if resp.status == ResultStatus.DUPLICATE and retried:
                resp.error = (
                    "the command ran, but another command of this initiator replaced it in its "
                    "slot before its result was read; check the outcome before running it again"
                    + (f" ({resp.error})" if resp.error else "")
                )
            if check and resp.status != ResultStatus.OK:
                raise ArrayError(
                    self.where, resp.status, _without_name(resp.error, process), process, resp.data
                )
            return resp

    def _new_tag(self) -> int:
        return self.rng.getrandbits(64) or 1

    async def _sleep_until(self, deadline: float, n: int, why: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        if left <= 0:
            raise CommandTimeout(f"{why}: gave up after {timeout:g}s")
        await asyncio.sleep(min(left, min(self.poll_max, self.poll_min * (2 ** min(n, 20)))))

    async def _wait(
        self, slot: int, slot_size: int, tag: int, deadline: float, timeout: float, process: int
    ) -> Response:
        loop = asyncio.get_running_loop()
        delay = 0.0
        while True:
            state, got_tag, resp = await self.read_slot(slot, slot_size)
            if state == SlotState.BUSY_OTHER:
                raise _Retry("taken by another initiator")
            if got_tag not in (0, tag):
                raise _Retry(f"holds another command (tag {got_tag:016x})")
            if state == SlotState.DONE and resp is not None:
                if got_tag != tag:
                    raise ProtocolError(f"{self.io.name}: slot {slot}: DONE with no tag")
                await self._release(slot, slot_size, tag)
                return self._response(resp, slot, process)
            if state == SlotState.FREE:
                if got_tag == tag and resp is not None:  # ran without edited data and freed (S906)
                    return self._response(resp, slot, process)
                raise _Retry("the array does not hold the command")
            # PENDING / INCOMPLETE: poll (immediately, then 1 ms doubling to 100 ms)
            now = loop.time()
            if now >= deadline:
                await self._release(slot, slot_size, tag, best_effort=True)
                raise CommandTimeout(
                    f"{self.where}: {_label(process)} did not complete within "
                    f"{timeout:g}s (slot {slot} {state.name})"
                )
            delay = self.poll_min if delay == 0 else min(self.poll_max, delay * 2)
            await asyncio.sleep(min(delay, max(0.0, deadline - now)))

    def _response(self, r: Any, slot: int, process: int) -> Response:
        return Response(r.process or process, r.tag, r.state, r.status, r.error, r.data, slot, self.array)

    async def _release(self, slot: int, slot_size: int, tag: int, best_effort: bool = False) -> None:
        try:
            await self.io.write(slot * slot_size, _pad(encode_release(tag), self.io.block_size))
        except HostctlError as exc:
            # The result is in hand; a slot left DONE is freed by the array's own expiry.
            log.warning("could not release slot %d on %s: %s", slot, self.where, exc)

"""The command device as a backing store: a LUN whose written blocks are commands (spec Fig. 5-9).

A logical unit whose backstore is a :class:`CommandDeviceStore` is a command device. The SCSI
layer hands every READ and WRITE to this store, so commands are seen on the write path (S901 of
Fig. 9 without any polling) and results are produced on the read path. Nothing is stored on disk:
the "medium" is computed from the slot table on each read.

Layout (``block.py`` has the byte formats, ``slots.py`` the slot table's bookkeeping and expiry,
``docs/command-device.md`` the host protocol)::

    slot 0            directory, read-only: geometry and slot states as the reader sees them
    slot 1 .. N       one command each, owned by the origin that wrote it
    (tail)            size - (N + 1) * slot_size bytes: reads as zeros, writes are ignored

Rules, in short:

* A write at the start of a slot beginning with a command header starts a command there for
  ``current_origin()``; the block may arrive in several writes at sequential offsets, and only a
  complete block whose CRC verifies runs. A block that does not parse is answered BAD_BLOCK.
* A command runs in its own task; the write returns as soon as it is accepted (PENDING).
* Reads never change anything: the owner sees its response block, everyone else sees FREE or
  BUSY_OTHER. A release block (matching tag) frees the slot; so do WRITE SAME zeros / UNMAP over
  the slot start, and expiry after ``result_ttl`` seconds.
* (origin, tag) pairs already executed are not run again for ``tag_ttl`` seconds after their
  result was released or expired: a retry sees the held result, or DUPLICATE once released.
* Nothing on this path fails a SCSI command: writes that are not commands are ignored (debug log).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ..backstore.base import Backstore, Extent
from ..origin import current_origin
from .block import (COMMAND_HEADER, COMMAND_MAGIC, DEFAULT_SLOT_SIZE, DIRECTORY_HEADER, RELEASE_MAGIC,
                    BlockError, Command, Directory, Response, ResultStatus, SlotState,
                    decode_command, decode_release, peek_command_header)
from .slots import SlotTable, _Record, _Slot

log = logging.getLogger(__name__)

_TAG_AND_PROCESS = struct.Struct(">QH")  # at offset 8 of a command header (and the tag of a release)

_FREE_IMAGE = Response(SlotState.FREE).encode()
_BUSY_IMAGE = Response(SlotState.BUSY_OTHER).encode()


class Dispatcher(Protocol):
    async def execute(self, command: Command, origin: str) -> Response: ...


class CommandDeviceStore(SlotTable, Backstore):
    """A command device (see the module docstring). ``dispatcher`` runs the commands."""

    thin = False

    def __init__(self, size: int, dispatcher: Dispatcher, *, slot_size: int = DEFAULT_SLOT_SIZE,
                 allowed: tuple[str, ...] | None = None, result_ttl: float = 300.0, tag_ttl: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, max_running: int = 16,
                 max_tags: int = 65536) -> None:
        if slot_size < 4096 or slot_size % 512:
            raise ValueError(f"command device slot size {slot_size} must be a multiple of 512 and >= 4096")
        slots = size // slot_size - 1
        if slots < 1:
            raise ValueError(f"a command device of {size} bytes has no command slot "
                             f"(needs at least {2 * slot_size} bytes with {slot_size}-byte slots)")
        if DIRECTORY_HEADER.size + slots > slot_size:
            # The directory (one byte per slot) must fit slot 0; the space past the last slot that
            # fits reads as zeros, like any tail.
            fit = slot_size - DIRECTORY_HEADER.size
            log.warning("command device: %d slots of %d bytes do not fit the directory; using %d", slots,
                        slot_size, fit)
            slots = fit
        self.size = size
        self.dispatcher = dispatcher
        self.slot_size = slot_size
        self.slots = slots
        self.allowed = None if allowed is None else tuple(allowed)
        self.result_ttl = float(result_ttl)
        self.tag_ttl = float(tag_ttl)
        self.clock = clock
        self.max_running = max_running
        self.max_tags = max_tags
        self.max_input = slot_size - COMMAND_HEADER.size
        self._slots = [_Slot(i) for i in range(slots + 1)]  # [0] is the directory, never used
        self._live: dict[tuple[str, int], _Record] = {}  # executed tags whose result is still held
        self._released: OrderedDict[tuple[str, int], float] = OrderedDict()  # tag -> release time
        self._tasks: set[asyncio.Task[Response]] = set()
        self._next_deadline = math.inf
        self.running = 0
        #: executed commands (for tests and statistics)
        self.executed = 0
        #: bugs caught on the I/O path (logged; the SCSI command still succeeds)
        self.internal_errors = 0

    # --- Backstore ---------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        try:
            return self._read(offset, length, current_origin())
        except Exception:  # noqa: BLE001 - a bug here must not turn into MEDIUM ERROR
            self.internal_errors += 1
            log.exception("command device: read of %d bytes at %d failed", length, offset)
            return bytes(max(length, 0))

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        try:
            self._write(offset, memoryview(data).cast("B"), current_origin())
        except Exception:  # noqa: BLE001 - the host's WRITE always succeeds; see the log
            self.internal_errors += 1
            log.exception("command device: write of %d bytes at %d failed", len(data), offset)

    async def flush(self) -> None:
        return None

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Zeroing (WRITE SAME zeros, UNMAP) over the start of a slot you own releases it."""
        try:
            self._zero(offset, length, current_origin())
        except Exception:  # noqa: BLE001
            self.internal_errors += 1
            log.exception("command device: zeroing %d bytes at %d failed", length, offset)

    async def unmap(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]

    # compare_and_write: the base class compares against what read() returns to this origin and
    # then goes through write(); that is exactly the semantics wanted.

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def wait_idle(self) -> None:
        """Wait until no command is running (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def slot_info(self) -> list[dict[str, Any]]:
        """The slot table for status displays: one entry per busy slot."""
        out = []
        for s in self._slots[1:]:
            if s.owner is None:
                continue
            state = SlotState.INCOMPLETE if s.buf is not None else (s.record.state if s.record else
                                                                     SlotState.FREE)
            out.append({"slot": s.index, "owner": s.owner, "state": state.name,
                        "tag": s.record.tag if s.record else None,
                        "process": s.record.process if s.record else None,
                        "status": s.record.status.name if s.record and s.record.state is SlotState.DONE
                        else None})
        return out

    # --- ACL -----------------------------------------------------------------------------------

    def is_allowed(self, origin: str) -> bool:
        if self.allowed is None:
            return True
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.allowed)

    # --- reads -----------------------------------------------------------------------------------

    def _read(self, offset: int, length: int, origin: str) -> bytes:
        if length <= 0:
            return b""
        self._expire(self.clock())
        out = bytearray(length)
        ss = self.slot_size
        pos, end = max(offset, 0), min(offset + length, (self.slots + 1) * ss)
        while pos < end:
            idx, inner = divmod(pos, ss)
            n = min(ss - inner, end - pos)
            image = self._image(idx, origin)
            if inner < len(image):
                piece = image[inner : inner + n]
                out[pos - offset : pos - offset + len(piece)] = piece
            pos += n
        return bytes(out)

    def _state_for(self, slot: _Slot, origin: str) -> SlotState:
        if slot.owner is None:
            return SlotState.FREE
        if slot.owner != origin:
            return SlotState.BUSY_OTHER
        if slot.buf is not None:
            return SlotState.INCOMPLETE
        return slot.record.state if slot.record is not None else SlotState.FREE

    def _image(self, idx: int, origin: str) -> bytes:
        """Slot ``idx`` as ``origin`` reads it (without the zero padding)."""
        if idx == 0:
            states = [self._state_for(s, origin) for s in self._slots[1:]]
            return Directory(self.slot_size, self.slots, states).encode()
        slot = self._slots[idx]
        state = self._state_for(slot, origin)
        if state is SlotState.FREE:
            return _FREE_IMAGE
        if state is SlotState.BUSY_OTHER:
            return _BUSY_IMAGE
        if state is SlotState.INCOMPLETE:
            assert slot.buf is not None
            tag, process = self._raw_tag(slot.buf)
            return Response(SlotState.INCOMPLETE, tag, process).encode()
        assert slot.record is not None
        return slot.record.image

    @staticmethod
    def _raw_tag(buf: bytes | bytearray | memoryview) -> tuple[int, int]:
        """Tag and process of a (possibly partial or invalid) command header, 0 where unknown."""
        if len(buf) < 18:
            return (_TAG_AND_PROCESS.unpack_from(buf, 8)[0], 0) if len(buf) >= 16 else (0, 0)
        tag, process = _TAG_AND_PROCESS.unpack_from(buf, 8)
        return tag, process

    # --- writes ----------------------------------------------------------------------------------

    def _ignore(self, why: str, offset: int, length: int, origin: str) -> None:
        log.debug("command device: ignored write of %d bytes at %d from %s: %s", length, offset,
                  origin or "?", why)

    def _write(self, offset: int, mv: memoryview, origin: str) -> None:
        length = len(mv)
        if length == 0:
            return
        now = self.clock()
        self._expire(now)
        ss = self.slot_size
        if offset < 0 or offset + length > self.size:
            return self._ignore("outside the device", offset, length, origin)
        idx, inner = divmod(offset, ss)
        if idx == 0:
            return self._ignore("the directory (slot 0) is read-only", offset, length, origin)
        if idx > self.slots:
            return self._ignore("past the last slot", offset, length, origin)
        if inner + length > ss:
            return self._ignore("it covers more than one slot", offset, length, origin)
        slot = self._slots[idx]
        if slot.owner is not None and slot.owner != origin:
            return self._ignore(f"slot {idx} belongs to another initiator", offset, length, origin)
        if inner == 0:
            self._begin(slot, mv, origin, now)
        elif slot.buf is not None:
            if inner > len(slot.buf):
                return self._ignore(f"slot {idx} has {len(slot.buf)} bytes of a command; this write "
                                    f"leaves a gap", offset, length, origin)
            end = inner + length
            if end > len(slot.buf):
                slot.buf.extend(bytes(end - len(slot.buf)))
            slot.buf[inner:end] = mv
            slot.touched = now
            self._note_deadline(now + self.result_ttl)
            self._evaluate(slot, origin, now)
        else:
            self._ignore(f"not at the start of slot {idx} and no command is arriving there", offset, length,
                         origin)

    def _begin(self, slot: _Slot, mv: memoryview, origin: str, now: float) -> None:
        head = bytes(mv[:4])
        if head == RELEASE_MAGIC:
            try:
                tag = decode_release(mv)
            except BlockError as exc:
                return self._ignore(f"release block: {exc}", slot.index * self.slot_size, len(mv), origin)
            if tag is None:
                return self._ignore("release block truncated", slot.index * self.slot_size, len(mv), origin)
            return self._release(slot, tag, origin, now)
        if not COMMAND_MAGIC.startswith(head) and mv.tobytes().count(0) == len(mv):
            return self._ignore(f"zeros at the start of slot {slot.index}", slot.index * self.slot_size,
                                len(mv), origin)
        # A new block in a slot this origin owns replaces what was there (as if it were released
        # first); the old record is kept aside until the new block is resolved (see _Slot.replaced).
        if slot.record is not None:
            self._unstash(slot, now)
            slot.replaced, slot.record = slot.record, None
        slot.owner = origin
        slot.buf = bytearray(mv)
        slot.touched = now
        self._note_deadline(now + self.result_ttl)
        self._evaluate(slot, origin, now)

    def _evaluate(self, slot: _Slot, origin: str, now: float) -> None:
        """Look at the bytes received so far: wait for more, answer, or run the command."""
        buf = slot.buf
        assert buf is not None
        if not COMMAND_MAGIC.startswith(bytes(buf[:4])):
            return self._answer(slot, now, *self._raw_tag(buf), ResultStatus.BAD_BLOCK,
                                f"not a command block (bad magic {bytes(buf[:4])!r}, "
                                f"expected {COMMAND_MAGIC!r})")
        if len(buf) < COMMAND_HEADER.size:
            return  # INCOMPLETE
        tag, process = self._raw_tag(buf)
        if not self.is_allowed(origin):
            log.warning("command device: %s may not issue commands here (process %d, tag %#x)", origin or "?",
                        process, tag)
            return self._answer(slot, now, tag, process, ResultStatus.NOT_ALLOWED,
                                f"initiator {origin!r} may not issue commands on this command device")
        try:
            header = peek_command_header(buf, self.max_input)
            assert header is not None
            if len(buf) < header.total_length:
                return  # INCOMPLETE: the rest follows in later writes
            command = decode_command(buf, self.max_input)
        except BlockError as exc:
            log.info("command device: bad block from %s in slot %d: %s", origin or "?", slot.index, exc)
            return self._answer(slot, now, tag, process, ResultStatus.BAD_BLOCK, str(exc))
        # Fig. 9 S906: the command block itself is deleted now; only its record is kept.
        slot.buf = None
        self._accept(slot, command, origin, now)

    def _accept(self, slot: _Slot, command: Command, origin: str, now: float) -> None:
        key = (origin, command.tag)
        record = self._live.get(key)
        if record is not None:
            log.info("command device: %s repeated tag %#x: showing its result in slot %d, not running it "
                     "again", origin or "?", command.tag, slot.index)
            return self._attach(slot, record, now)
        if key in self._released:
            return self._answer(slot, now, command.tag, command.process, ResultStatus.DUPLICATE,
                                f"tag {command.tag:#x} was already executed and its result released; "
                                f"not run again (use a new tag)")
        if self.running >= self.max_running:
            return self._answer(slot, now, command.tag, command.process, ResultStatus.BUSY,
                                f"{self.running} commands are running; retry later")
        record = _Record(key, command.tag, command.process, SlotState.PENDING,
                         Response(SlotState.PENDING, command.tag, command.process).encode())
        self._live[key] = record
        self._attach(slot, record, now)
        self.running += 1
        self.executed += 1
        # create_task copies the current context: the command runs with its origin.
        task = asyncio.get_running_loop().create_task(self.dispatcher.execute(command, origin),
                                                      name=f"cmddev-{origin}-{command.tag:#x}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(record, t))

    def _finished(self, record: _Record, task: asyncio.Task[Response]) -> None:
        """The command's task ended (even if it was cancelled before it started)."""
        self._tasks.discard(task)
        self.running -= 1
        if task.cancelled():
            response = Response(SlotState.DONE, status=ResultStatus.FAILED,
                                error="the array stopped before the command finished")
        elif (exc := task.exception()) is not None:  # the dispatcher should not raise; be safe anyway
            log.error("command device: dispatcher failed on process %d", record.process, exc_info=exc)
            response = Response(SlotState.DONE, status=ResultStatus.FAILED, error=f"internal error: {exc}")
        else:
            response = task.result()
        self._complete(record, response)

    def _release(self, slot: _Slot, tag: int, origin: str, now: float) -> None:
        if slot.owner is None:
            return self._ignore(f"release of slot {slot.index}, which is free", slot.index * self.slot_size,
                                16, origin)
        current = slot.record.tag if slot.record is not None else self._raw_tag(slot.buf or b"")[0]
        if tag != current:
            return self._ignore(f"release tag {tag:#x} does not match slot {slot.index} (tag {current:#x})",
                                slot.index * self.slot_size, 16, origin)
        log.debug("command device: %s released slot %d (tag %#x)", origin or "?", slot.index, tag)
        self._drop(slot, now)

    def _zero(self, offset: int, length: int, origin: str) -> None:
        if length <= 0:
            return
        now = self.clock()
        self._expire(now)
        ss = self.slot_size
        first = max(1, -(-offset // ss))  # the first slot whose start is in the range
        last = min(self.slots, (offset + length - 1) // ss)
        for idx in range(first, last + 1):
            slot = self._slots[idx]
            if slot.owner == origin:
                log.debug("command device: %s zeroed slot %d: released", origin or "?", idx)
                self._drop(slot, now)

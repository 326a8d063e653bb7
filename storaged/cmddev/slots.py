"""The command device's slot table: which record each slot shows, and when results and tags expire.

:class:`SlotTable` is the bookkeeping half of :class:`~storaged.cmddev.store.CommandDeviceStore`
(which sets every attribute declared here in its ``__init__``): a record is attached to the slots
that show it, let go when they are freed, and retired (its tag remembered for ``tag_ttl``) once no
slot shows it any more. The store keeps the I/O path that decides what to attach.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .block import Response, ResultStatus, SlotState

#: the store's logger, so that moving this code here changed no log record's source
log = logging.getLogger("storaged.cmddev.store")


@dataclass(slots=True, eq=False)
class _Record:
    """The outcome of one command. Usually shown by one slot; a retried tag written to another slot
    shows the same record there too (``holders`` counts the slots)."""

    key: tuple[str, int] | None  # (origin, tag) for executed commands; None for status-only answers
    tag: int
    process: int
    state: SlotState  # PENDING or DONE
    image: bytes  # the encoded response block the owner reads
    done_at: float = 0.0
    holders: int = 0
    status: ResultStatus = ResultStatus.OK


@dataclass(slots=True, eq=False)
class _Slot:
    index: int
    owner: str | None = None
    buf: bytearray | None = None  # INCOMPLETE: the bytes of the block received so far
    touched: float = 0.0  # INCOMPLETE: time of the last write
    record: _Record | None = None
    attached: float = 0.0  # when ``record`` appeared in this slot
    #: the record this slot showed before a new block started arriving in it: kept (not retired)
    #: until the new block is resolved, so that re-sending the same command finds its result
    replaced: _Record | None = None


class SlotTable:
    """Slot and record bookkeeping, mixed into :class:`CommandDeviceStore`."""

    slot_size: int
    result_ttl: float
    tag_ttl: float
    max_tags: int
    clock: Callable[[], float]
    _slots: list[_Slot]
    _live: dict[tuple[str, int], _Record]
    _released: OrderedDict[tuple[str, int], float]
    _next_deadline: float

    def _complete(self, record: _Record, response: Response) -> None:
        now = self.clock()
        if not isinstance(response, Response):
            response = Response(SlotState.DONE, status=ResultStatus.FAILED,
                                error="internal error: no response")
        response.state = SlotState.DONE
        response.tag = record.tag
        response.process = record.process
        try:
            image = response.encode(limit=self.slot_size)
        except (TypeError, ValueError) as exc:
            image = Response(SlotState.DONE, record.tag, record.process, ResultStatus.FAILED,
                             f"edited data cannot be encoded: {exc}").encode(limit=self.slot_size)
        record.image = image
        record.status = ResultStatus(struct.unpack_from(">H", image, 18)[0])
        record.state = SlotState.DONE
        record.done_at = now
        if record.holders == 0:
            self._retire(record, now)
        else:
            self._note_deadline(now + self.result_ttl)

    def _answer(self, slot: _Slot, now: float, tag: int, process: int, status: ResultStatus,
                error: str) -> None:
        """Answer in ``slot`` without running anything (BAD_BLOCK, NOT_ALLOWED, DUPLICATE, BUSY)."""
        slot.buf = None
        image = Response(SlotState.DONE, tag, process, status, error).encode(limit=self.slot_size)
        record = _Record(None, tag, process, SlotState.DONE, image, done_at=now, status=status)
        self._attach(slot, record, now)

    def _attach(self, slot: _Slot, record: _Record, now: float) -> None:
        slot.record = record
        slot.attached = now
        record.holders += 1
        if record.state is SlotState.DONE:
            self._note_deadline(now + self.result_ttl)
        self._unstash(slot, now)

    def _unstash(self, slot: _Slot, now: float) -> None:
        record, slot.replaced = slot.replaced, None
        if record is not None:
            self._let_go(record, now)

    def _let_go(self, record: _Record, now: float) -> None:
        record.holders -= 1
        if record.holders == 0 and record.state is SlotState.DONE:
            self._retire(record, now)

    def _drop(self, slot: _Slot, now: float) -> None:
        """Free ``slot``; a result no slot shows any more is forgotten, its tag remembered."""
        record = slot.record
        slot.owner = None
        slot.buf = None
        slot.record = None
        self._unstash(slot, now)
        if record is not None:
            self._let_go(record, now)

    def _retire(self, record: _Record, now: float) -> None:
        if record.key is None:
            return
        self._live.pop(record.key, None)
        self._released[record.key] = now
        self._released.move_to_end(record.key)
        while len(self._released) > self.max_tags:
            self._released.popitem(last=False)
        self._note_deadline(now + self.tag_ttl)

    # --- expiry ----------------------------------------------------------------------------------

    def _note_deadline(self, when: float) -> None:
        if when < self._next_deadline:
            self._next_deadline = when

    def _expire(self, now: float) -> None:
        if now < self._next_deadline:
            return
        upcoming = math.inf
        for slot in self._slots[1:]:
            if slot.buf is not None:
                deadline = slot.touched + self.result_ttl
                what = "incomplete command"
            elif slot.record is not None and slot.record.state is SlotState.DONE:
                deadline = max(slot.attached, slot.record.done_at) + self.result_ttl
                what = f"result (tag {slot.record.tag:#x})"
            else:
                continue
            if deadline <= now:
                log.info("command device: %s of %s in slot %d expired unreleased", what, slot.owner or "?",
                         slot.index)
                self._drop(slot, now)
            else:
                upcoming = min(upcoming, deadline)
        while self._released:
            key, released = next(iter(self._released.items()))
            if released + self.tag_ttl > now:
                upcoming = min(upcoming, released + self.tag_ttl)
                break
            del self._released[key]
        self._next_deadline = upcoming

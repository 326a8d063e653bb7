"""Allowances of write-buffer bytes and task slots, per session and per array.

A write's whole Expected Data Transfer Length is granted before the target asks for (R2T) or
accepts (unsolicited) its data, so no task ever holds part of a grant while waiting for more:
tasks holding grants finish once the initiator sends the data it was asked for, and waiting tasks
hold nothing. A request larger than the whole allowance is granted when nothing else holds any,
so one big write can always run alone (memory stays below max(limit, largest write)).

Buffers themselves are allocated only as data arrives; a grant is a promise, not memory.
"""

from __future__ import annotations

from collections.abc import Callable


class Budget:
    """Bytes of write data and task slots one holder (a session or the array) may have at once."""

    def __init__(self, max_bytes: int, max_tasks: int) -> None:
        self.max_bytes = max_bytes
        self.max_tasks = max_tasks
        self.bytes_used = 0
        self.tasks_used = 0
        #: called (once) when bytes or tasks are given back, so blocked sessions retry
        self._waiters: dict[int, Callable[[], None]] = {}

    def fits(self, n: int) -> bool:
        return self.bytes_used + n <= self.max_bytes or self.bytes_used == 0

    @property
    def tasks_free(self) -> int:
        return max(self.max_tasks - self.tasks_used, 0)

    def take(self, n: int) -> None:
        self.bytes_used += n

    def give(self, n: int) -> None:
        self.bytes_used -= n
        if n:
            self._wake()

    def take_task(self) -> None:
        self.tasks_used += 1

    def give_task(self) -> None:
        self.tasks_used -= 1
        self._wake()

    def wait(self, key: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` the next time something is given back."""
        self._waiters[key] = callback

    def forget(self, key: int) -> None:
        self._waiters.pop(key, None)

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            for callback in waiters.values():
                callback()


def take_both(session: Budget, array: Budget, n: int) -> bool:
    """Grant ``n`` bytes from both allowances, or from neither."""
    if not (session.fits(n) and array.fits(n)):
        return False
    session.take(n)
    array.take(n)
    return True

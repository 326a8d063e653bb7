"""A deterministic asyncio event loop on virtual time.

The loop never sleeps and never touches a socket: its selector's ``select(timeout)`` moves a
virtual clock forward by ``timeout`` and returns no events, so the next timer is due at once.
``loop.time()`` and, while a simulation runs, ``time.time``, ``time.time_ns`` and ``time.monotonic``
read that clock; ``secrets.randbits`` (journal epochs) draws from the run's seeded RNG. Together
with a seeded RNG for every choice, one seed gives one exact run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import secrets
import selectors
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
SPIN_STEPS = 10_000  # loop steps in a row with work ready and no time passing: someone polls
Ts = TypeVarTuple("Ts")

#: the wall-clock second the virtual clock starts at (any fixed value; 2027-01-15)
EPOCH = 1_800_000_000.0


class Stalled(Exception):
    """Every task waits for something that can never happen (no ready callback, no timer)."""


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        return EPOCH + self.now


class _VirtualSelector(selectors.BaseSelector):
    """Instead of waiting for I/O, let the virtual time pass that the loop would have waited."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, 0, events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled("no task can make progress and no timer is pending")
        if timeout > 0:
            self.clock.now += timeout
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualLoop(asyncio.BaseEventLoop):
    """BaseEventLoop with a virtual selector: no self-pipe, no threads, time is ``clock.now``."""

    def __init__(self, clock: VirtualClock, on_step: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._clock = clock
        self._on_step = on_step
        self._selector = _VirtualSelector(clock)
        self.on_executor: Callable[[], None] | None = None
        self.on_spin: Callable[[], None] | None = None
        self._spins = 0

    def time(self) -> float:
        return self._clock.now

    def _run_once(self) -> None:
        """One step. A task that polls with ``asyncio.sleep(0)`` keeps the ready queue full, so
        the virtual clock would never reach the next timer (in real time it just burns CPU until
        the timer is due): after SPIN_STEPS such steps in a row the clock jumps to that timer."""
        now = self._clock.now
        ready, scheduled = self._ready, self._scheduled  # type: ignore[attr-defined]
        if ready and scheduled:
            self._spins += 1
            if self._spins > SPIN_STEPS:
                self._clock.now = max(now, scheduled[0].when())
                self._spins = 0
                if self.on_spin is not None:
                    self.on_spin()
        super()._run_once()  # type: ignore[misc]
        if self._clock.now != now:
            self._spins = 0
        if self._on_step is not None:
            self._on_step()

    def _process_events(self, event_list: Any) -> None:
        pass

    def run_in_executor(self, executor: Executor | None, func: Callable[[Unpack[Ts]], T],
                        *args: *Ts) -> asyncio.Future[T]:
        """Run the work inline, now: a real thread would finish at a real-time moment, so the
        virtual time (and the order) at which its result arrives would differ from run to run
        (``asyncio.to_thread``, e.g. ``Replication.save_async``, lands here)."""
        fut: asyncio.Future[T] = self.create_future()
        if self.on_executor is not None:
            self.on_executor()
        try:
            fut.set_result(func(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, as a thread would
            fut.set_exception(exc)
        return fut

    def _write_to_self(self) -> None:
        pass


#: the simulated array (a node incarnation) the current task works for; None for hosts/driver
NODE: contextvars.ContextVar[Any] = contextvars.ContextVar("sim_node", default=None)


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                  context: contextvars.Context | None = None) -> asyncio.Task[Any]:
    """Every task remembers the node incarnation it was created for, so a crash can end them all."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    owner = context.get(NODE) if context is not None else NODE.get()
    if owner is not None:
        owner.adopt(task)
    return task


@contextlib.contextmanager
def patched_world(clock: VirtualClock, rng: random.Random) -> Iterator[None]:
    """Process-wide seams, for the duration of one run only (restored afterwards)."""
    saved = (time.time, time.time_ns, time.monotonic, secrets.randbits)
    time.time = clock.wall
    time.time_ns = lambda: int(clock.wall() * 1e9)
    time.monotonic = lambda: clock.now
    secrets.randbits = rng.getrandbits  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time, time.time_ns, time.monotonic, secrets.randbits = saved


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]], clock: VirtualClock, rng: random.Random,
                on_step: Callable[[], None] | None = None, on_executor: Callable[[], None] | None = None,
                on_spin: Callable[[], None] | None = None) -> T:
    """Run ``main()`` to completion on a fresh virtual loop with the world patched; ``on_step``
    runs after every loop iteration."""
    with patched_world(clock, rng):
        loop = VirtualLoop(clock, on_step)
        loop.on_executor = on_executor
        loop.on_spin = on_spin
        loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
        loop.set_exception_handler(lambda _loop, _ctx: None)  # crashed nodes leave orphans behind
        try:
            return loop.run_until_complete(main())
        finally:
            _cancel_all(loop)
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

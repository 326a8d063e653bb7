"""``GET /metrics`` for one array: its own registry, served by prometheus_client's HTTP server.

The registry is per array, not the library's global default, so several arrays in one process
(tests, the simulator) do not collide; it holds the library's process, platform and GC
collectors and the array's :class:`~.collector.ArrayCollector`. The server is the library's
threaded WSGI server (HTTP parsing, gzip, OpenMetrics negotiation are its job); each scrape hops
onto the array's event loop to take its snapshot there (:func:`~.snapshot.gather`), so no state
is read from another thread and a slow scraper never holds the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from .collector import ArrayCollector
from .snapshot import Snapshot, gather

if TYPE_CHECKING:
    from ..array.array import Array

log = logging.getLogger("storaged.metrics")

#: a scrape gives up on the event loop after this long (the loop is stuck, or stopping)
SCRAPE_TIMEOUT = 10.0

def array_registry(source: ArrayCollector) -> CollectorRegistry:
    """A registry with the process/platform/GC collectors and ``source``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(source)
    return registry


class MetricsServer:
    """The array's metrics endpoint; ``start()`` and ``stop()`` run on the array's loop."""

    def __init__(self, array: Array) -> None:
        self.array = array
        self.registry = array_registry(ArrayCollector(self._snapshot))
        self.address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> Snapshot:
        """Called in the server's request thread: take the snapshot on the array's loop."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(gather(self.array), self._loop).result(SCRAPE_TIMEOUT)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 picks one); returns the bound address."""
        self._loop = asyncio.get_running_loop()
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics.listen {host}:{port}: {exc.strerror}") from None
        bound = self._httpd.server_address
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def stop(self) -> None:
        """Stop serving: the accept loop ends, the socket closes (requests in flight finish)."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        await asyncio.to_thread(httpd.shutdown)  # waits for serve_forever to notice (<= 0.5 s)
        httpd.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)

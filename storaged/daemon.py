"""The storaged process: build the array from its config, serve it, shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from .array.array import VERSION, Array
from .array.reload import reload_from
from .config import ArrayConfig

log = logging.getLogger("storaged")

__all__ = ["VERSION", "Array", "run"]


async def run(cfg: ArrayConfig, reread: Callable[[], ArrayConfig] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP re-reads the config (``reread``) and applies what changed."""
    array = Array(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def hup() -> None:
        if array.address is None or stop.is_set():
            log.warning("reload: SIGHUP ignored, the array is %s", "stopping" if stop.is_set() else "still starting")
            return
        task = loop.create_task(reload_from(array, reread), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        host, port = await array.start()
    except BaseException:
        await array.stop()
        raise
    log.info("array %s (storaged %s): iSCSI portal listening on %s:%d", cfg.name, VERSION, host, port)
    for t in cfg.targets:
        log.info("target %s: LUNs %s; initiators: %s%s", t.name, ",".join(str(lun.lun) for lun in t.luns),
                 "any" if t.initiators is None else ",".join(sorted(t.initiators)),
                 "; CHAP" if t.chap else "")
    await stop.wait()
    if reloads:  # let a reload in progress finish (or roll back) so every LUN it touched is synced below
        await asyncio.wait(reloads)
    log.info("shutting down: closing sessions and syncing LUNs")
    await array.stop()
    log.info("stopped")
    return 0

"""The storaged process: build the array from its config, serve it, shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from .array.array import VERSION, Array
from .config import ArrayConfig

log = logging.getLogger("storaged")

__all__ = ["VERSION", "Array", "run"]


async def run(cfg: ArrayConfig) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit status."""
    array = Array(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
    log.info("shutting down: closing sessions and syncing LUNs")
    await array.stop()
    log.info("stopped")
    return 0

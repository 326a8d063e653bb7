"""The storaged process: build the array from its config, serve it, shut down cleanly.

Wiring only: backing stores and logical units from the config, the iSCSI portal on top, signal
handling. Each piece it wires is tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from .backstore.sparsefile import SparseFileBackstore
from .config import CHAP_ALGORITHM_NUMBERS, ArrayConfig, parse_hostport
from .identity import array_uuid, lun_identity
from .iscsi.portal import Portal, TargetInfo
from .iscsi.transport import IscsiServer
from .scsi.lu import LogicalUnit
from .scsi.target import ScsiTarget

log = logging.getLogger("storaged")

VERSION = "0.1.0"


class Array:
    """One storage array: its LUNs, targets and iSCSI portal."""

    def __init__(self, cfg: ArrayConfig) -> None:
        self.cfg = cfg
        self.backstores: list[SparseFileBackstore] = []
        self.targets: dict[str, ScsiTarget] = {}
        self.server: IscsiServer | None = None
        self.address: tuple[str, int] | None = None

    def open_luns(self) -> None:
        cfg = self.cfg
        os.makedirs(cfg.data_dir, exist_ok=True)
        uid = array_uuid(cfg.data_dir)
        try:
            for tcfg in cfg.targets:
                luns: dict[int, LogicalUnit] = {}
                for lcfg in tcfg.luns:
                    path = os.path.join(cfg.data_dir, lcfg.file)
                    store = SparseFileBackstore(path, lcfg.size, thin=lcfg.thin)
                    self.backstores.append(store)
                    ident = lun_identity(uid, tcfg.name, lcfg.lun, lcfg.serial)
                    luns[lcfg.lun] = LogicalUnit(
                        store,
                        naa=ident.naa,
                        serial=ident.serial,
                        product=lcfg.product,
                        block_size=lcfg.block_size,
                        read_only=lcfg.read_only,
                    )
                    log.info("LUN %d of %s: %s, %d MiB, %s%s", lcfg.lun, tcfg.name, path, lcfg.size >> 20,
                             "thin" if lcfg.thin else "thick", ", read-only" if lcfg.read_only else "")
                self.targets[tcfg.name] = ScsiTarget(tcfg.name, luns)
        except BaseException:
            self.close_luns()
            raise

    def portal(self, bound: tuple[str, int]) -> Portal:
        ic = self.cfg.iscsi
        addresses = list(ic.advertise) or [f"{bound[0]}:{bound[1]}"]
        return Portal(
            targets={
                t.name: TargetInfo(
                    name=t.name,
                    alias=t.alias,
                    allowed_initiators=t.initiators,
                    chap=t.chap,
                    portal_group_tag=t.portal_group_tag,
                    luns=frozenset(lun.lun for lun in t.luns),
                )
                for t in self.cfg.targets
            },
            addresses=addresses,
            discovery_chap=ic.discovery_chap,
            operational={
                "MaxRecvDataSegmentLength": str(ic.max_recv_data_segment_length),
                "MaxBurstLength": str(ic.max_burst_length),
                "FirstBurstLength": str(ic.first_burst_length),
                "MaxOutstandingR2T": str(ic.max_outstanding_r2t),
                "InitialR2T": "No",
                "ImmediateData": "Yes",
                "MaxConnections": "1",
                "ErrorRecoveryLevel": "0",
                "HeaderDigest": ",".join(ic.digests),
                "DataDigest": ",".join(ic.digests),
            },
            chap_algorithms=tuple(CHAP_ALGORITHM_NUMBERS[a] for a in ic.chap_algorithms),
        )

    async def start(self) -> tuple[str, int]:
        self.open_luns()
        ic = self.cfg.iscsi
        host, port = parse_hostport(ic.listen, "iscsi.listen", self.cfg.source)
        portal = self.portal((host, port))
        self.server = IscsiServer(portal, dict(self.targets), queue_depth=ic.queue_depth,
                                  nop_interval=ic.nop_interval, nop_timeout=ic.nop_timeout,
                                  login_timeout=ic.login_timeout)
        bound = await self.server.start(host, port)
        if not ic.advertise:
            # SendTargets announces the address actually bound (port 0 picks one).
            portal.addresses[:] = [f"{bound[0]}:{bound[1]}"]
        self.address = bound
        return bound

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
        self.close_luns()

    def close_luns(self) -> None:
        for store in self.backstores:
            try:
                store.close()  # fdatasync, then release the lock
            except OSError as exc:
                log.error("closing %s: %s", store.path, exc)
        self.backstores.clear()


async def run(cfg: ArrayConfig) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit status."""
    array = Array(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = await array.start()
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

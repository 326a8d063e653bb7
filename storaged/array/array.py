"""One storage array: its LUNs (data, command devices, virtual volumes), targets, remote links.

This is the wiring between the parts: sparse-file stores and logical units from the config, the
command device dispatcher, the LUN map (virtual volumes over peer links), the link server that
serves this array's volumes to peers, and the iSCSI portal in front of it all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..backstore.base import Backstore
from ..backstore.sparsefile import SparseFileBackstore
from ..cmddev.commands import build_dispatcher
from ..cmddev.store import CommandDeviceStore
from ..config import CHAP_ALGORITHM_NUMBERS, ArrayConfig, LunConfig, PeerConfig, TargetConfig, parse_hostport
from ..identity import LunIdentity, array_uuid, lun_identity
from ..iscsi.portal import Portal, TargetInfo
from ..iscsi.transport import IscsiServer
from ..persist import atomic_write_json, read_json
from ..remote.api import LinkError, RemoteError, VolumeInfo
from ..remote.link import LinkServer, PeerLink
from ..remote.protocol import Status
from ..scsi.lu import LogicalUnit
from ..scsi.target import ScsiTarget
from ..repl.commands import register_replication
from ..repl.manager import Replication
from .virtual import RemoteBackstore
from .volumes import LuVolume

if TYPE_CHECKING:
    from ..metrics.server import MetricsServer
    from .reload_plan import ReloadPlan

log = logging.getLogger("storaged.array")

VERSION = __version__  # pyproject.toml, through the installed metadata (storaged/__init__.py)


@dataclass(slots=True)
class LunRecord:
    """A configured LUN and what is serving it right now (virtual ones may wait for their peer)."""

    target: TargetConfig
    cfg: LunConfig
    identity: LunIdentity
    lu: LogicalUnit | None = None
    remote: VolumeInfo | None = None
    #: peers that used this LUN over the remote link since start (a reload will not remove it)
    peers: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, int]:
        return (self.target.name, self.cfg.lun)


class Array:
    def __init__(self, cfg: ArrayConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.uuid = ""
        self.stores: list[Backstore] = []
        self.targets: dict[str, ScsiTarget] = {}
        self.luns: dict[tuple[str, int], LunRecord] = {}
        self.links: dict[str, PeerLink] = {}
        self.link_server: LinkServer | None = None
        self.iscsi: IscsiServer | None = None
        self.address: tuple[str, int] | None = None
        self.link_address: tuple[str, int] | None = None
        self.started = time.time()
        self.dispatcher = build_dispatcher(self)
        self.repl = Replication(self)
        register_replication(self.dispatcher, self.repl)
        self._cache_path = os.path.join(cfg.data_dir, "peer-volumes.json")
        self._refreshing: set[asyncio.Task[None]] = set()
        #: the /metrics endpoint (storaged/metrics), when metrics.listen is set
        self.metrics: MetricsServer | None = None

    # --- building ----------------------------------------------------------------------------

    def open_luns(self) -> None:
        os.makedirs(self.cfg.data_dir, exist_ok=True)
        self.uuid = array_uuid(self.cfg.data_dir)
        cache = self._load_cache()
        try:
            for tcfg in self.cfg.targets:
                target = ScsiTarget(tcfg.name, {}, tpgts=(tcfg.portal_group_tag,))
                self.targets[tcfg.name] = target
                for lcfg in tcfg.luns:
                    rec = LunRecord(tcfg, lcfg, lun_identity(self.uuid, tcfg.name, lcfg.lun, lcfg.serial))
                    self.luns[rec.key] = rec
                    if lcfg.map is not None:
                        cached = cache.get(lcfg.map.array, {}).get(_map_key(lcfg))
                        if cached is not None:
                            rec.remote = VolumeInfo.from_dict(cached)
                        continue  # attached once the peer link exists (start_links)
                    store = self._local_store(lcfg)
                    self.stores.append(store)
                    self._attach(rec, store)
        except BaseException:
            self.close_stores()
            raise

    def _local_store(self, lcfg: LunConfig) -> Backstore:
        cd = lcfg.command_device
        if cd is not None:
            # Commands and results live in memory: a command device holds no user data.
            return CommandDeviceStore(lcfg.size, self.dispatcher, slot_size=cd.slot_size, allowed=cd.allowed)
        confine = None if lcfg.allow_outside_data_dir else self.cfg.data_dir
        return SparseFileBackstore(os.path.join(self.cfg.data_dir, lcfg.file), lcfg.size, thin=lcfg.thin,
                                   confine_to=confine)

    def _new_lu(self, rec: LunRecord, store: Backstore) -> LogicalUnit:
        lcfg = rec.cfg
        block_size = rec.remote.block_size if rec.remote is not None else lcfg.block_size
        return LogicalUnit(store, naa=rec.identity.naa, serial=rec.identity.serial, product=lcfg.product,
                           block_size=block_size, read_only=lcfg.read_only)

    def _attach(self, rec: LunRecord, store: Backstore, lu: LogicalUnit | None = None) -> None:
        lcfg = rec.cfg
        lu = lu or self._new_lu(rec, store)
        rec.lu = lu
        self.targets[rec.target.name].add_lun(lcfg.lun, lu)
        where = (f"virtual volume of {lcfg.map.array} LUN {lcfg.map.lun}" if lcfg.map is not None
                 else os.path.join(self.cfg.data_dir, lcfg.file))
        log.info("LUN %d of %s: %s, %s, %d MiB", lcfg.lun, rec.target.name, lcfg.kind, where, store.size >> 20)

    # --- virtual volumes and peer links -----------------------------------------------------

    def new_link(self, peer: PeerConfig) -> PeerLink:
        """The link to one peer, not yet started."""
        rc = self.cfg.remote
        host, port = parse_hostport(peer.address, "remote.peers.address", self.cfg.source)
        link = PeerLink(self.name, self.uuid, peer.name, host, port, peer.secret,
                        io_timeout=rc.io_timeout, keepalive=rc.keepalive,
                        keepalive_timeout=max(3 * rc.keepalive, 2.0))
        link.add_listener(functools.partial(self._link_changed, peer.name))
        return link

    def start_links(self) -> None:
        for peer in self.cfg.remote.peers:
            link = self.links[peer.name] = self.new_link(peer)
            link.start()
        for rec in self.luns.values():
            if rec.cfg.map is not None and rec.remote is not None:
                self._attach(rec, RemoteBackstore(self.links[rec.cfg.map.array], rec.remote))

    def _link_changed(self, peer: str, up: bool) -> None:
        log.info("remote link to %s is %s", peer, "up" if up else "down")
        if up:
            task = asyncio.get_running_loop().create_task(self._refresh_virtual(peer))
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)

    async def _refresh_virtual(self, peer: str) -> None:
        """Learn (or re-check) the geometry of the peer LUNs our virtual volumes map."""
        link = self.links[peer]
        changed = False
        for rec in self.luns.values():
            m = rec.cfg.map
            if m is None or m.array != peer:
                continue
            try:
                info = await link.open_volume(m.target, m.lun)
            except LinkError as exc:
                log.error("virtual volume LUN %d of %s: %s LUN %d: %s", rec.cfg.lun, rec.target.name, peer, m.lun, exc)
                continue
            if rec.remote is not None and (rec.remote.size, rec.remote.block_size) != (info.size, info.block_size):
                log.error("virtual volume LUN %d of %s: %s LUN %d changed geometry (%d bytes in %d-byte blocks, was "
                          "%d in %d); serving the new geometry", rec.cfg.lun, rec.target.name, peer, m.lun,
                          info.size, info.block_size, rec.remote.size, rec.remote.block_size)
                self.targets[rec.target.name].remove_lun(rec.cfg.lun)
                rec.lu = None
            if rec.remote != info:
                changed = True
            rec.remote = info
            if rec.lu is None:
                self._attach(rec, RemoteBackstore(link, info))
        if changed:
            self._save_cache()

    def _load_cache(self) -> dict[str, dict[str, Any]]:
        try:
            data = read_json(self._cache_path)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_cache(self) -> None:
        cache: dict[str, dict[str, Any]] = {}
        for rec in self.luns.values():
            if rec.cfg.map is not None and rec.remote is not None:
                cache.setdefault(rec.cfg.map.array, {})[_map_key(rec.cfg)] = rec.remote.to_dict()
        atomic_write_json(self._cache_path, cache)

    # --- LinkHandler: serving our volumes to peers --------------------------------------------

    def volume(self, peer: str, target: str, lun: int) -> LuVolume | None:
        tname = target or self.cfg.targets[0].name
        rec = self.luns.get((tname, lun))
        if rec is None or rec.lu is None:
            return None
        refusal = self.repl.link_access(peer, tname, lun)
        if refusal:
            log.warning("peer %s refused LUN %d of %s: %s", peer, lun, tname, refusal)
            return None
        rec.peers.add(peer)
        lu = rec.lu
        info = VolumeInfo(tname, lun, lu.num_blocks * lu.block_size, lu.block_size, lu.thin,
                          rec.cfg.command_device is not None, rec.identity.naa.hex())
        return LuVolume(lu, info)

    async def call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "array_info":
            return self.array_info()
        if method == "ping":
            return {"array": self.name, "time": time.time()}
        if method.startswith("repl."):
            return await self.repl.handle_call(peer, method, params)
        raise RemoteError(Status.BAD_REQUEST, f"unknown method {method!r}")

    # --- ArrayControl: what command devices report ----------------------------------------------

    def _lun_entry(self, rec: LunRecord) -> dict[str, Any]:
        lcfg = rec.cfg
        lu = rec.lu
        size = lu.num_blocks * lu.block_size if lu is not None else (rec.remote.size if rec.remote else 0)
        entry: dict[str, Any] = {
            "target": rec.target.name, "lun": lcfg.lun, "type": lcfg.kind, "size": size,
            "block_size": lu.block_size if lu is not None else lcfg.block_size,
            "thin": bool(lu.thin) if lu is not None else lcfg.thin, "naa": rec.identity.naa.hex(),
            "serial": rec.identity.serial, "map": None,
        }
        if lcfg.map is not None:
            link = self.links.get(lcfg.map.array)
            entry["map"] = {"array": lcfg.map.array, "target": rec.remote.target if rec.remote else lcfg.map.target,
                            "lun": lcfg.map.lun,
                            "state": "online" if lu is not None and link is not None and link.connected else "offline",
                            "command_device": bool(rec.remote and rec.remote.command_device)}
        return entry

    def command_devices(self) -> list[dict[str, Any]]:
        """The command device management table (spec Fig. 5): array -> LUN that reaches its command device."""
        table = []
        for rec in self.luns.values():
            if rec.cfg.command_device is not None:
                table.append({"array": self.name, "target": rec.target.name, "lun": rec.cfg.lun})
            elif rec.cfg.map is not None and rec.remote is not None and rec.remote.command_device:
                table.append({"array": rec.cfg.map.array, "target": rec.target.name, "lun": rec.cfg.lun})
        return table

    def array_info(self) -> dict[str, Any]:
        luns = [self._lun_entry(rec) for rec in self.luns.values()]
        return {
            "array": self.name,
            "uuid": self.uuid,
            "version": VERSION,
            "uptime": round(time.time() - self.started, 1),
            # what discovery answers (the advertised address), then where the portal listens
            "portal": (self.cfg.iscsi.advertise[0] if self.cfg.iscsi.advertise
                       else f"{self.address[0]}:{self.address[1]}" if self.address else None),
            "listen": f"{self.address[0]}:{self.address[1]}" if self.address else None,
            "luns": luns,
            "lun_map": [{"target": e["target"], "lun": e["lun"], "array": e["map"]["array"],
                         "remote_target": e["map"]["target"], "remote_lun": e["map"]["lun"],
                         "state": e["map"]["state"]} for e in luns if e["map"]],
            "command_devices": self.command_devices(),
            "links": self.link_status()["links"],
        }

    def link_status(self) -> dict[str, Any]:
        return {"links": [link.status() for link in self.links.values()],
                "listen": f"{self.link_address[0]}:{self.link_address[1]}" if self.link_address else None}

    # --- lifecycle -----------------------------------------------------------------------------

    def portal(self, bound: tuple[str, int]) -> Portal:
        ic = self.cfg.iscsi
        return Portal(
            targets={
                t.name: TargetInfo(name=t.name, alias=t.alias, allowed_initiators=t.initiators, chap=t.chap,
                                   portal_group_tag=t.portal_group_tag, luns=frozenset(lun.lun for lun in t.luns))
                for t in self.cfg.targets
            },
            addresses=list(ic.advertise) or [f"{bound[0]}:{bound[1]}"],
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
        rc = self.cfg.remote
        if rc.listen is not None:
            host, port = parse_hostport(rc.listen, "remote.listen", self.cfg.source)
            self.link_server = LinkServer(self.name, self.uuid, {p.name: p.secret for p in rc.peers}, self,
                                          max_unauthenticated=rc.max_unauthenticated,
                                          handshake_timeout=rc.handshake_timeout)
            self.link_address = await self.link_server.start(host, port)
            log.info("remote link listening on %s:%d (peers: %s)", *self.link_address,
                     ", ".join(p.name for p in rc.peers) or "none")
        self.start_links()
        await self.repl.start()  # P-VOLs journal (and S-VOLs are protected) before any host connects
        ic = self.cfg.iscsi
        host, port = parse_hostport(ic.listen, "iscsi.listen", self.cfg.source)
        portal = self.portal((host, port))
        self.iscsi = IscsiServer(portal, dict(self.targets), queue_depth=ic.queue_depth,
                                 nop_interval=ic.nop_interval, nop_timeout=ic.nop_timeout,
                                 login_timeout=ic.login_timeout, session_write_budget=ic.session_write_budget,
                                 array_write_budget=ic.array_write_budget, array_tasks=ic.array_tasks)
        bound = await self.iscsi.start(host, port)
        if not ic.advertise:
            portal.addresses[:] = [f"{bound[0]}:{bound[1]}"]
        self.address = bound
        if self.cfg.metrics.listen is not None:
            from ..metrics.server import MetricsServer  # prometheus_client only when configured

            mhost, mport = parse_hostport(self.cfg.metrics.listen, "metrics.listen", self.cfg.source)
            self.metrics = MetricsServer(self)
            maddr = await self.metrics.start(mhost, mport)
            log.info("metrics listening on http://%s:%d/metrics", *maddr)
        return bound

    async def reload(self, new_cfg: ArrayConfig) -> ReloadPlan:
        """Apply a re-read config while serving (SIGHUP): all of it or, if any part is refused,
        none of it. storaged/array/reload.py does the work and the logging."""
        from .reload import reload_array

        return await reload_array(self, new_cfg)

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.iscsi is not None:
            await self.iscsi.close()
        await self.repl.stop()
        for link in self.links.values():
            await link.close()
        if self.link_server is not None:
            await self.link_server.close()
        for task in list(self._refreshing):
            task.cancel()
        self.close_stores()

    def close_stores(self) -> None:
        for store in self.stores:
            try:
                store.close()  # sparse files: fdatasync, then release the lock
            except OSError as exc:
                log.error("closing %s: %s", getattr(store, "path", store), exc)
        self.stores.clear()


def _map_key(lcfg: LunConfig) -> str:
    assert lcfg.map is not None
    return f"{lcfg.map.target}/{lcfg.map.lun}"

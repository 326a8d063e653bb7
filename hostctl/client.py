"""The host side of the command device protocol (spec Fig. 7, Fig. 8 S801-S805), as a library.

:class:`CommandDeviceClient` runs one command on one command device::

    read slot 0 (the directory) -> pick a FREE slot -> write the command block (one write)
    -> read the slot until DONE -> check the tag -> decode -> write a release block

:class:`Host` turns array names into clients (Fig. 8 S802): the local array's command device comes
from the host config; another array's is the LUN that the local array's command device management
table (Fig. 5, reported by ARRAY_INFO) names for it, a virtual volume through which array A relays
the command to array B.

This module keeps :class:`Host` (tests patch ``open_device`` and ``BlockDevice`` here) and
re-exports the rest, so ``hostctl.client.X`` keeps working: :mod:`hostctl.protocol`
(CommandDeviceClient, Response: the slot protocol), :mod:`hostctl.processes` (Process and process
names) and :mod:`hostctl.routing` (finding another array's command device in ARRAY_INFO).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from .config import HostConfig
from .device import BlockDevice, CommandDeviceIO, IscsiDevice, open_device
from .errors import ConfigError, UsageError
from .processes import Process, parse_process, process_name, process_names
from .protocol import FIRST_READ, POLL_MAX, POLL_MIN, CommandDeviceClient, Response
from .routing import _find_command_device, _naa_of

__all__ = [
    "BY_ID_DIR",
    "FIRST_READ",
    "POLL_MAX",
    "POLL_MIN",
    "CommandDeviceClient",
    "Host",
    "Process",
    "Response",
    "parse_process",
    "process_name",
    "process_names",
]

log = logging.getLogger("hostctl")

BY_ID_DIR = "/dev/disk/by-id"


# --- resolving arrays ----------------------------------------------------------------------------


class Host:
    """This host's view: which arrays it may drive and how their command devices are reached.

    ``device`` overrides ``local.command_device`` (the entry point; routing to other arrays still
    goes through it). Opened devices are cached and closed by :meth:`close`.
    """

    def __init__(
        self,
        config: HostConfig,
        *,
        device: str | None = None,
        timeout: float | None = None,
        by_id_dir: str = BY_ID_DIR,
    ) -> None:
        self.config = config
        self.device_spec = device or config.local.command_device
        self.timeout = timeout if timeout is not None else config.timeout
        self.by_id_dir = by_id_dir
        self._local: CommandDeviceIO | None = None
        self._clients: dict[str, CommandDeviceClient] = {}
        self._opened: list[CommandDeviceIO] = []
        self.local_info: dict[str, Any] | None = None

    async def __aenter__(self) -> Host:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        for io in reversed(self._opened):
            try:
                await io.close()
            except Exception:  # noqa: BLE001
                log.debug("closing %s failed", io.name, exc_info=True)
        self._opened.clear()
        self._clients.clear()
        self._local = None

    @property
    def local_array(self) -> str | None:
        return self.config.local.array

    async def local_device(self) -> CommandDeviceIO:
        if self._local is None:
            if not self.device_spec:
                raise UsageError("no command device: set local.command_device in the config or pass --device")
            self._local = await open_device(
                self.device_spec, initiator=self.config.initiator, timeout=min(self.timeout, 10.0)
            )
            self._opened.append(self._local)
        return self._local

    async def local_client(self) -> CommandDeviceClient:
        key = "\0local"
        if key not in self._clients:
            io = await self.local_device()
            self._clients[key] = CommandDeviceClient(
                io, array=self.local_array or io.name, initiator=self.config.initiator
            )
        return self._clients[key]

    def check_allowed(self, array: str) -> None:
        if not self.config.allows(array):
            raise UsageError(
                f"array {array} is not one this host drives (arrays in {self.config.source}: "
                f"{', '.join(self.config.arrays)})"
            )

    async def client(self, array: str | None = None) -> CommandDeviceClient:
        """The client for ``array`` (default: the local array), routing through the local one."""
        name = array or self.local_array
        if name is None or name == self.local_array:
            if name is not None:
                self.check_allowed(name)
            return await self.local_client()
        self.check_allowed(name)
        if name in self._clients:
            return self._clients[name]
        local = await self.local_client()
        info = await self.array_info()
        if self.local_array is None and info.get("array") == name:
            return local
        via = self.local_array or str(info.get("array") or local.where)
        entry = _find_command_device(info, name, via)
        io = await self._open_routed(entry, info, name, via)
        client = CommandDeviceClient(io, array=name, initiator=self.config.initiator, via=via)
        self._clients[name] = client
        return client

    async def array_info(self) -> dict[str, Any]:
        """ARRAY_INFO of the local array (cached): its LUNs and command device management table."""
        if self.local_info is None:
            local = await self.local_client()
            resp = await local.run(Process.ARRAY_INFO, {}, timeout=self.timeout)
            self.local_info = resp.data if isinstance(resp.data, dict) else {}
        return self.local_info

    async def _open_routed(
        self, entry: dict[str, Any], info: dict[str, Any], name: str, via: str
    ) -> CommandDeviceIO:
        lun = entry["lun"]
        target = entry.get("target") or None
        local = await self.local_device()
        if isinstance(local, IscsiDevice):
            io: CommandDeviceIO = await local.open_lun(lun, target)
        else:
            io = await asyncio.to_thread(BlockDevice, self._block_path(entry, info, name, via))
        self._opened.append(io)
        return io

    def _block_path(self, entry: dict[str, Any], info: dict[str, Any], name: str, via: str) -> str:
        lun = entry["lun"]
        if lun in self.config.local.devices:
            return self.config.local.devices[lun]
        naa = _naa_of(info, lun, entry.get("target") or None)
        if naa:
            path = os.path.join(self.by_id_dir, f"wwn-0x{naa}")
            if os.path.exists(path):
                return path
        hint = f" (naa {naa}: {os.path.join(self.by_id_dir, 'wwn-0x' + naa)} does not exist)" if naa else ""
        raise ConfigError(
            self.config.source,
            f"local.devices.{lun}",
            f"{name}'s command device is LUN {lun} of {via}{hint}; log in to it with open-iscsi "
            f"or map it: local.devices: {{{lun}: /dev/sdX}}",
        )

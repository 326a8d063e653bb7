"""Two real storaged arrays that know each other, on loopback, for control-plane tests."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from .daemon import StoragedProcess, wait_for

SECRET = "test-link-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iqn(site: str) -> str:
    return f"iqn.2026-11.io.storaged:{site}"


def site_config(name: str, peer: str, link_port: int, peer_port: int, *, secret: str = SECRET,
                cmd_allowed: list[str] | None = None, io_timeout: float = 3.0, peer_address: str | None = None,
                extra_luns: list[dict] | None = None, replication: dict | None = None) -> dict:
    cmddev: dict = {"allowed": cmd_allowed} if cmd_allowed is not None else {}
    return {
        "array": {"name": name},
        **({"replication": replication} if replication else {}),
        "remote": {"listen": f"127.0.0.1:{link_port}", "io_timeout": io_timeout, "keepalive": 0.5,
                   "peers": [{"name": peer, "address": peer_address or f"127.0.0.1:{peer_port}", "secret": secret}]},
        "targets": [{"name": iqn(name), "luns": [
            {"lun": 0, "size": "64MiB", "file": "data0.img"},
            {"lun": 1, "size": "32MiB", "file": "data1.img"},
            {"lun": 2, "size": "4MiB", "command_device": cmddev},
            {"lun": 3, "map": {"array": peer, "lun": 2}},
            {"lun": 4, "map": {"array": peer, "lun": 1}},
            *(extra_luns or []),
        ]}],
    }


@dataclass
class Sites:
    a: StoragedProcess
    b: StoragedProcess
    tmp: Path

    def host_config(self, initiator: str = "iqn.2026-11.test:host-a") -> Path:
        path = self.tmp / f"host-{initiator.rsplit(':', 1)[-1]}.yaml"
        path.write_text(yaml.safe_dump({
            "initiator": initiator,
            "arrays": ["site-a", "site-b"],
            "local": {"array": "site-a", "command_device": self.a.url(iqn("site-a"), 2)},
            "timeout": 20,
        }))
        return path

    def linked(self, timeout: float = 20.0) -> bool:
        """Both arrays report their link up and their virtual volumes attached."""
        return wait_for(lambda: self.a.log.count("virtual volume of site-b") >= 2
                        and self.b.log.count("virtual volume of site-a") >= 2
                        and "remote link to site-b is up" in self.a.log
                        and "remote link to site-a is up" in self.b.log, timeout)

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


def start_sites(tmp: Path, *, a_extra: dict | None = None, b_extra: dict | None = None,
                ports: tuple[int, int] | None = None) -> Sites:
    pa, pb = ports or (free_port(), free_port())
    ca = site_config("site-a", "site-b", pa, pb, **(a_extra or {}))
    cb = site_config("site-b", "site-a", pb, pa, **(b_extra or {}))
    b = StoragedProcess(tmp / "b", cb).start()
    a = StoragedProcess(tmp / "a", ca).start()
    return Sites(a, b, tmp)

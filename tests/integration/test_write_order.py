"""Write-order fidelity under faults: a random workload over two volumes of one journal group while
the remote link is cut and stalled (through the project's fault proxy) and either array is killed
with SIGKILL and restarted.

Invariants checked:
* whenever the secondary is killed, its S-VOL files on disk equal the P-VOLs as they were after
  some prefix of the primary's writes (every block holds the index of the last write of that
  prefix that covered it);
* no acknowledged write is lost and nothing is applied twice: after a final drain the S-VOLs equal
  the P-VOLs byte for byte and both equal the model of acknowledged writes.

The CI run does STORAGED_FAULT_CYCLES (default 24) fault cycles; the long run is
``STORAGED_FAULT_CYCLES=300 .venv/bin/python -m pytest tests/integration/test_write_order.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storaged.faultproxy import FaultProxy
from storaged.iscsi.initiator import IscsiSession

from .daemon import wait_for
from .sites import free_port, iqn, start_sites
from .test_replication import command, write16

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VOLS = {0: "data0.img", 5: "data5.img"}  # P-VOL LUN -> S-VOL file on site-b (same LUN numbers)
VOL_SIZE = 8 << 20
BLOCKS = VOL_SIZE // 512
CYCLES = int(os.environ.get("STORAGED_FAULT_CYCLES", "24"))


@dataclass
class Model:
    """Every write the primary may have applied, in order, and which of them were acknowledged."""

    writes: list[tuple[int, int, int]] = field(default_factory=list)  # (volume, lba, blocks); index = pos + 1
    acked: set[int] = field(default_factory=set)
    maybe: set[int] = field(default_factory=set)  # in flight when the primary died

    def expected(self, prefix: int, volume: int) -> list[int]:
        out = [0] * BLOCKS
        for i, (vol, lba, n) in enumerate(self.writes[:prefix], start=1):
            if vol == volume and (i in self.acked or i in self.maybe):
                out[lba : lba + n] = [i] * n
        return out


def block_payload(index: int, volume: int, lba: int, n: int) -> bytes:
    return b"".join(struct.pack(">QIQ", index, volume, lba + k).ljust(512, bytes([index % 251])) for k in range(n))


def indices(raw: bytes) -> list[int]:
    return [struct.unpack_from(">Q", raw, off)[0] for off in range(0, len(raw), 512)]


def prefix_consistent(model: Model, volumes: dict[int, list[int]]) -> int:
    """The prefix length the S-VOL contents correspond to; fails the test if there is none."""
    prefix = max((max(v) for v in volumes.values()), default=0)
    for vol, got in volumes.items():
        exp = model.expected(prefix, vol)
        bad = [b for b in range(BLOCKS) if got[b] != exp[b]]
        assert not bad, (f"S-VOL {vol} is not a prefix state (prefix {prefix}): block {bad[0]} holds write "
                         f"{got[bad[0]]}, expected {exp[bad[0]]} ({len(bad)} blocks differ)")
    return prefix


def test_write_order_fidelity_under_faults(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("STORAGED_FAULT_SEED", "20261126")))
    link_a, link_b = free_port(), free_port()
    extra = [{"lun": 5, "size": "8MiB", "file": "data5.img"}]
    # site-b reaches site-a's link through the proxy (the direction replication uses)
    proxy_port = free_port()
    sites = start_sites(tmp_path, ports=(link_a, link_b),
                        a_extra={"extra_luns": extra},
                        b_extra={"extra_luns": extra, "peer_address": f"127.0.0.1:{proxy_port}"})
    model = Model()
    stats = {"kill_a": 0, "kill_b": 0, "cut": 0, "stall": 0, "prefix_checks": 0}

    async def scenario() -> None:
        proxy = FaultProxy(("127.0.0.1", proxy_port), ("127.0.0.1", link_a))
        await proxy.start()
        try:
            assert await asyncio.to_thread(sites.linked)
            r = await command(sites.b.port, "site-b", 16, {"group": "g1", "peer": "site-a", "pvol": 5, "svol": 5,
                                                           "pjnl": 1, "sjnl": 1})
            assert r.data["state"] == "COPY"
            await wait_pair(sites)
            r = await command(sites.b.port, "site-b", 16, {"group": "g1", "peer": "site-a", "pvol": 0, "svol": 0,
                                                           "pjnl": 1, "sjnl": 1})
            await wait_pair(sites)
            writer = Writer(sites, model, rng)
            for cycle in range(CYCLES):
                await writer.burst(rng.randrange(5, 25))
                fault = rng.choice(["kill_b", "kill_a", "cut", "stall"])
                stats[fault] += 1
                if fault == "kill_b":
                    sites.b.kill()
                    stats["prefix_checks"] += 1
                    prefix_consistent(model, {vol: await asyncio.to_thread(read_file, tmp_path / "b" / f)
                                              for vol, f in VOLS.items()})
                    await asyncio.to_thread(sites.b.start)
                elif fault == "kill_a":
                    await writer.kill_primary_mid_write()
                elif fault == "cut":
                    proxy.faults.refuse = True
                    proxy.cut()
                    await writer.burst(rng.randrange(1, 10))
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    proxy.faults.refuse = False
                else:
                    proxy.faults.set(stall=True)
                    await writer.burst(rng.randrange(1, 10))
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    proxy.faults.set(stall=False)
            await writer.close()
            assert await asyncio.to_thread(
                lambda: wait_for(lambda: "remote link to site-a is up" in sites.b.log, 30))
            r = await command(sites.b.port, "site-b", 25, {"group": "g1", "timeout": 90})
            assert r.data["result"] == "DONE", r.data
            for vol in VOLS:
                p = indices(await read_lun(sites.a.port, "site-a", vol))
                s = indices(await read_lun(sites.b.port, "site-b", vol))
                assert p == s, f"volume {vol}: P and S differ after the drain"
                assert p == model.expected(len(model.writes), vol), f"volume {vol}: an acknowledged write is missing"
        finally:
            await proxy.close()

    try:
        asyncio.run(scenario())
    finally:
        sites.stop()
    print(f"fault cycles: {stats}, writes: {len(model.writes)} ({len(model.acked)} acknowledged)")
    assert stats["prefix_checks"] >= 1 or CYCLES < 8


async def wait_pair(sites) -> None:  # type: ignore[no-untyped-def]
    for _ in range(300):
        r = await command(sites.b.port, "site-b", 17, {"group": "g1"})
        if r.data["groups"][0]["state"] == "PAIR":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"never reached PAIR: {r.data}")


def read_file(path: Path) -> list[int]:
    with open(path, "rb") as f:
        return indices(f.read(VOL_SIZE).ljust(VOL_SIZE, b"\0"))


async def read_lun(port: int, site: str, lun: int) -> bytes:
    s = IscsiSession()
    await s.login("127.0.0.1", port, iqn(site), initiator="iqn.2026-11.test:checker")
    r = await s.scsi(lun, bytes([0x88, 0]) + (0).to_bytes(8, "big") + BLOCKS.to_bytes(4, "big") + b"\0\0",
                     read_length=VOL_SIZE)
    await s.logout()
    assert r.status == 0
    return r.data


class Writer:
    """One host writing to the P-VOLs at queue depth 1, so acknowledgement order is write order."""

    def __init__(self, sites, model: Model, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
        self.sites = sites
        self.model = model
        self.rng = rng
        self.session: IscsiSession | None = None

    async def _session(self) -> IscsiSession:
        if self.session is None:
            self.session = IscsiSession()
            await self.session.login("127.0.0.1", self.sites.a.port, iqn("site-a"), initiator="iqn.2026-11.test:app")
        return self.session

    async def write_one(self) -> None:
        vol = self.rng.choice(list(VOLS))
        n = self.rng.choice([1, 1, 2, 8, 32])
        lba = self.rng.randrange(0, BLOCKS - n)
        self.model.writes.append((vol, lba, n))
        index = len(self.model.writes)
        s = await self._session()
        r = await s.scsi(vol, write16(lba, n), data_out=block_payload(index, vol, lba, n), timeout=30)
        assert r.status == 0, r
        self.model.acked.add(index)

    async def burst(self, n: int) -> None:
        for _ in range(n):
            await self.write_one()

    async def kill_primary_mid_write(self) -> None:
        """SIGKILL site-a while a write is in flight; after the restart, find out whether that
        write made it (a crash may come after the journal write) and continue."""
        task = asyncio.ensure_future(self.burst(50))
        await asyncio.sleep(self.rng.uniform(0.0, 0.05))
        self.sites.a.kill()
        try:
            await task
        except Exception:  # noqa: BLE001 - the write in flight fails with the connection
            pass
        if self.session is not None:
            await self.session.close()
            self.session = None
        await asyncio.to_thread(self.sites.a.start)
        last = len(self.model.writes)
        if last and last not in self.model.acked:
            vol, lba, n = self.model.writes[-1]
            got = indices(await read_lun(self.sites.a.port, "site-a", vol))[lba]
            if got == last:
                self.model.maybe.add(last)  # applied (redone from the journal) though never acknowledged
            else:
                self.model.writes[-1] = (vol, lba, 0)  # never happened: a no-op in the model

    async def close(self) -> None:
        if self.session is not None:
            await self.session.logout()

"""Host writers for power-cut tests: qemu-io over iscsi://, with writes, FUA writes and flushes.

Each writer is one interactive qemu-io process (one iSCSI session, one command at a time) on one
LUN. Every write carries the tags of ``tests/integration/write_model.py`` (a block says which
write put it there), written from a per-writer source file with ``write -s``. A command is sent
only when qemu-io shows its prompt, and is complete (its output with it) when the next prompt
shows: qemu-io reads stdin with stdio, so two lines sent at once would leave the second in its
buffer, unread until more input arrives. The image is opened ``-t writeback``: qemu-io's default,
writethrough, makes every write a FUA write, so nothing would ever be unsynced.

Durability bookkeeping: a write acknowledged with FUA (``write -f``) is durable when acknowledged;
a ``flush`` (SYNCHRONIZE CACHE) that completed makes durable every write to its LUN acknowledged
before the flush was issued, whichever writer made it, since the array last lost power (a write
the cut took away stays lost: a later flush does not bring it back).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.write_model import Model, Write, payload, tags

_PROMPT = b"qemu-io> "
COMMAND_TIMEOUT = 60.0  # a hang guard, not a speed check


class QemuIoError(Exception):
    """qemu-io answered a command with an error, or went away."""


@dataclass
class Ledger:
    """The write model plus which writes must survive a power cut of the array that acknowledged them."""

    model: Model = field(default_factory=Model)
    durable: set[int] = field(default_factory=set)
    flushes: int = 0
    fua: int = 0
    epoch: int = 0  # tick of the primary's last power cut: no later flush covers a write acknowledged before

    def flushed(self, lun: int, issued: int) -> None:
        self.flushes += 1
        self.durable.update(w.index for w in self.model.writes
                            if w.volume == lun and w.acked is not None and self.epoch < w.acked < issued)

    def power_cut(self) -> set[int]:
        """The primary lost power: its writes acknowledged but not durable (returned) are whatever
        the cut made of them, for good."""
        exposed = {w.index for w in self.model.writes
                   if w.acked is not None and w.acked > self.epoch and w.index not in self.durable}
        self.epoch = self.model.tick()
        return exposed


class QemuIoWriter:
    """One qemu-io process writing random tagged extents to ``lun`` of the target at ``portal``."""

    def __init__(self, ledger: Ledger, portal: tuple[str, int], target: str, lun: int, blocks: int,
                 workdir: Path, name: str, rng: random.Random) -> None:
        self.ledger, self.portal, self.target, self.lun, self.blocks = ledger, portal, target, lun, blocks
        self.src = workdir / f"{name}.src"
        self.name, self.rng = name, rng
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: Write | None = None

    async def start(self) -> None:
        opts = (f"driver=iscsi,transport=tcp,portal={self.portal[0]}:{self.portal[1]},target={self.target},"
                f"lun={self.lun},initiator-name=iqn.2026-11.test:{self.name}")
        self.proc = await asyncio.create_subprocess_exec(
            "qemu-io", "-t", "writeback", "--image-opts", opts, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        await self._command(None)  # opened (or the error that it could not)

    async def _command(self, command: str | None) -> str:
        """Run ``command`` (None: just wait for the first prompt); its output, without the prompt.
        Raises QemuIoError if qemu-io went away."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            if command is not None:
                self.proc.stdin.write(f"{command}\n".encode())
                await self.proc.stdin.drain()
            out = await asyncio.wait_for(self.proc.stdout.readuntil(_PROMPT), COMMAND_TIMEOUT)
        except TimeoutError as exc:
            raise QemuIoError(f"{self.name}: no answer to {command!r} in {COMMAND_TIMEOUT} s (array hung?)") from exc
        except asyncio.IncompleteReadError as exc:
            raise QemuIoError(f"{self.name}: qemu-io exited during {command!r}: "
                              f"{exc.partial.decode(errors='replace').strip()}") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise QemuIoError(f"{self.name}: qemu-io went away during {command!r}") from exc
        return out[: -len(_PROMPT)].decode(errors="replace").strip()

    async def write(self) -> Write:
        """One tagged write (FUA 3% of the time); returns it, acknowledged. Raises QemuIoError on
        an error answer; the write is then left pending (its outcome is for the caller to settle)."""
        n = self.rng.choice([1, 1, 2, 8, 32])
        return await self.write_at(self.rng.randrange(0, self.blocks - n), n, self.rng.random() < 0.03)

    async def write_at(self, lba: int, n: int, fua: bool = False) -> Write:
        """Write ``n`` tagged blocks at ``lba``, with FUA or not (see ``write``)."""
        w = self.ledger.model.issue(self.lun, lba, n)
        self.src.write_bytes(payload(w))
        self.pending = w
        out = await self._command(f"write {'-f ' if fua else ''}-s {self.src} {lba * 512} {n * 512}")
        if f"wrote {n * 512}/{n * 512} bytes at offset {lba * 512}" not in out:
            raise QemuIoError(f"{self.name}: {w.describe()}: {out}")
        self.pending = None
        self.ledger.model.ack(w)
        if fua:
            self.ledger.fua += 1
            self.ledger.durable.add(w.index)
        return w

    async def flush(self) -> None:
        issued = self.ledger.model.tick()
        out = await self._command("flush")
        if out:
            raise QemuIoError(f"{self.name}: flush: {out}")
        self.ledger.flushed(self.lun, issued)

    async def run(self, stop: asyncio.Event, flush_every: int = 0) -> None:
        """Write until ``stop`` is set; with ``flush_every``, a flush after every 1..flush_every writes."""
        while not stop.is_set():
            for _ in range(self.rng.randrange(1, flush_every + 1) if flush_every else 1):
                await self.write()
            if flush_every:
                await self.flush()

    def settle(self) -> None:
        """The array died with this writer's write in flight: its outcome is unknown."""
        if self.pending is not None:
            self.ledger.model.lose(self.pending)
            self.pending = None

    async def close(self) -> None:
        """Quit qemu-io (killed when the array is gone: it would retry its connection for ever)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"quit\n")
                await proc.stdin.drain()
                await asyncio.wait_for(proc.wait(), 5)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                proc.kill()
                await proc.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


def durable_losses(ledger: Ledger, volumes: dict[int, bytes], writes: set[int] | None = None) -> list[str]:
    """Durable writes (see the module docstring; or ``writes``) a volume state lost: a block of
    the write shows nothing, or a write that completed before it was issued (so is older). A later
    or concurrent write over it is fine. Raises OrderViolation for bytes no write put there."""
    model = ledger.model
    shown = {vol: tags(model, vol, raw) for vol, raw in volumes.items()}
    lost = []
    for i in sorted(ledger.durable if writes is None else writes):
        w = model.writes[i - 1]
        for blk in range(w.lba, w.lba + w.blocks):
            top = shown[w.volume][blk]
            older = top != 0 and top != i and (done := model.writes[top - 1].done) is not None and done < w.issued
            if top == 0 or older:
                what = "nothing" if top == 0 else f"older {model.writes[top - 1].describe()}"
                lost.append(f"{w.describe()}: LUN {w.volume} block {blk} shows {what}")
                break
    return lost

"""Remote-link throughput: 1 MiB READs with 8 in flight, against a plain asyncio TCP stream.

The server end (a LinkServer whose volume returns a prebuilt block, and a bare asyncio stream
server that answers an 8-byte length with that many bytes) runs in a child process, the client
end in this one, so each side has its own core as two arrays would. The baseline has no framing,
no CRC, no request ids: it is the ceiling for Python on this loop, not a competing protocol.

    .venv/bin/python benchmarks/bench_link.py                   # uvloop and asyncio, 3 s each
    .venv/bin/python benchmarks/bench_link.py --loop uvloop --seconds 5 --size 4MiB --inflight 16
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storaged.backstore.base import Extent  # noqa: E402
from storaged.remote.api import VolumeInfo  # noqa: E402
from storaged.remote.link import LinkServer, PeerLink  # noqa: E402

SECRET = "bench-secret"
SIZE = 1 << 30


class ConstVolume:
    """Reads return one prebuilt block (sliced when shorter): measures the link, not a store."""

    def __init__(self, block: int) -> None:
        self.block = bytes(range(256)) * (block // 256)
        self.info = VolumeInfo("t", 0, SIZE, 512, False, False, "6" + "0" * 31)

    async def read(self, offset: int, length: int) -> bytes:
        return self.block if length == len(self.block) else bytes(length)

    async def write(self, offset: int, data: Any, fua: bool) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def unmap(self, offset: int, length: int) -> None:
        pass

    async def write_zeroes(self, offset: int, length: int) -> None:
        pass

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]

    async def compare_and_write(self, offset: int, expected: Any, data: Any, fua: bool) -> int:
        return -1


class Handler:
    def __init__(self, block: int) -> None:
        self.vol = ConstVolume(block)

    def volume(self, peer: str, target: str, lun: int) -> ConstVolume:
        return self.vol

    async def call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {}


def run_loop(kind: str, coro: Any) -> Any:
    if kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# --- server process -------------------------------------------------------------------------


async def serve(block: int, conn: Any) -> None:
    server = LinkServer("B", "uuid-b", {"A": SECRET}, Handler(block))
    _h, link_port = await server.start("127.0.0.1", 0)
    data = bytes(range(256)) * (block // 256)

    async def plain(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack(">Q", await r.readexactly(8))
                w.write(data if n == len(data) else bytes(n))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()

    plain_srv = await asyncio.start_server(plain, "127.0.0.1", 0)
    conn.send((link_port, plain_srv.sockets[0].getsockname()[1]))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
    plain_srv.close()
    await server.close()


def server_main(kind: str, block: int, conn: Any) -> None:
    run_loop(kind, serve(block, conn))


# --- client ---------------------------------------------------------------------------------


async def bench_link(port: int, block: int, inflight: int, seconds: float) -> float:
    link = PeerLink("A", "uuid-a", "B", "127.0.0.1", port, SECRET, max_inflight=inflight)
    link.start()
    await link.wait_connected(5)
    total = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal total
        off = i * block
        while time.perf_counter() < stop:
            data = await link.read("t", 0, off, block)
            total += len(data)

    await asyncio.gather(*(worker(i) for i in range(2)))  # warm-up
    total = 0
    start = time.perf_counter()
    stop = start + seconds
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    elapsed = time.perf_counter() - start
    await link.close()
    return total / elapsed / 1e6


async def bench_plain(port: int, block: int, inflight: int, seconds: float) -> float:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    req = struct.pack(">Q", block)
    w.write(req * inflight)  # keep `inflight` requests outstanding on the one stream
    total = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        data = await r.readexactly(block)
        total += len(data)
        w.write(req)
    elapsed = time.perf_counter() - start
    w.close()
    return total / elapsed / 1e6


def parse_size(s: str) -> int:
    units = {"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}
    s = s.strip().lower()
    for u, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(u):
            return int(float(s[: -len(u)]) * mult)
    return int(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    ap.add_argument("--size", default="1MiB", help="READ size (default 1MiB)")
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    block = parse_size(args.size)
    kinds = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    ctx = mp.get_context("spawn")
    print(f"{block >> 10} KiB READs, {args.inflight} in flight, {args.seconds:g} s each, server in a child process")
    for kind in kinds:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=server_main, args=(kind, block, child), daemon=True)
        proc.start()
        try:
            link_port, plain_port = parent.recv()
            link_mbs = run_loop(kind, bench_link(link_port, block, args.inflight, args.seconds))
            plain_mbs = run_loop(kind, bench_plain(plain_port, block, args.inflight, args.seconds))
        finally:
            parent.send("stop")
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
        print(f"{kind:8s} remote link {link_mbs:8.0f} MB/s   plain asyncio stream {plain_mbs:8.0f} MB/s"
              f"   ratio {link_mbs / plain_mbs:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What connections that never authenticate cost a remote-link server: its RSS growth.

A LinkServer runs in a child process; this process opens ``--connections`` (64) TCP connections
to it, and on each sends the header of a HELLO announcing a maximum-size payload (16 MiB + 64
KiB) followed by ``--send`` bytes of it (64 KiB), then keeps the connection open. After
``--settle`` seconds the child's VmRSS is read from /proc and compared with its value before the
connections. It also counts the connections the server closed (over the pre-auth frame cap, or
over ``max_unauthenticated``).

    .venv/bin/python benchmarks/bench_link_preauth.py
    .venv/bin/python benchmarks/bench_link_preauth.py --mode hello   # valid small HELLOs, then silence
    .venv/bin/python benchmarks/bench_link_preauth.py --tree /tmp/old-checkout   # another version's code

``--mode hello`` sends a well-formed HELLO and then stalls (a peer stuck in the handshake): that
exercises the cap on unauthenticated connections rather than the frame cap. Goal: <= 16 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import multiprocessing as mp
import os
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_MIB = 16.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class NoVolumes:
    def volume(self, peer: str, target: str, lun: int) -> None:
        return None

    async def call(self, peer: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {}


def server_main(tree: str, conn: Any) -> None:
    sys.path.insert(0, tree)
    from storaged.remote.link import LinkServer

    async def serve() -> None:
        kw: dict[str, Any] = {"handshake_timeout": 60.0}
        server = LinkServer("B", "uuid-b", {"A": "bench-secret-bench-secret"}, NoVolumes(), **kw)
        _h, port = await server.start("127.0.0.1", 0)
        limit = getattr(server, "max_unauthenticated", None)
        conn.send((port, limit, str(Path(inspect.getfile(LinkServer)).resolve())))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.close(grace=0.1)

    asyncio.run(serve())


def hello_header(length: int) -> bytes:
    """A v1/v2 frame header (28 bytes): HELLO announcing ``length`` payload bytes. The CRC is left
    0: the payload never arrives in full, so no CRC is ever checked."""
    return struct.pack(">4sBBBBHHQII", b"SDRL", 2, 1, 0, 0, 0, 0, 0, length, 0)


def valid_hello() -> bytes:
    from crc32c import crc32c

    body = json.dumps({"name": "A", "uuid": "u", "min_version": 1, "max_version": 2,
                       "nonce": os.urandom(32).hex()}).encode()
    head = struct.pack(">4sBBBBHHQI", b"SDRL", 2, 1, 0, 0, 0, 0, 0, len(body))
    return head + struct.pack(">I", crc32c(body, crc32c(head))) + body


async def attack(port: int, n: int, mode: str, send: int, settle: float) -> tuple[int, list[Any]]:
    """Open the connections; return how many the server closed, and the writers (kept open)."""
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if mode == "announce":
            w.write(hello_header((16 << 20) + (64 << 10)) + b"\0" * send)
        else:
            w.write(valid_hello())
        conns.append((r, w))
    await asyncio.sleep(settle)
    closed = 0
    for r, _w in conns:
        try:
            while (data := await asyncio.wait_for(r.read(65536), 0.01)):
                del data
            closed += 1  # EOF
        except TimeoutError:  # still open (TimeoutError is an OSError: test it first)
            pass
        except OSError:  # reset
            closed += 1
    return closed, [w for _r, w in conns]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--mode", choices=["announce", "hello"], default="announce")
    ap.add_argument("--send", type=int, default=65536, help="payload bytes sent after the header (announce)")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--tree", default=str(ROOT), help="checkout whose storaged package the server runs")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(args.tree, child), daemon=True)
    proc.start()
    try:
        port, limit, code = parent.recv()
        assert proc.pid is not None
        before = rss_kib(proc.pid)

        async def run() -> tuple[int, int]:
            closed, writers = await attack(port, args.connections, args.mode, args.send, args.settle)
            after = rss_kib(proc.pid)  # type: ignore[arg-type]
            for w in writers:
                w.close()
            return closed, after

        closed, after = asyncio.run(run())
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    growth = (after - before) / 1024
    print(f"server code: {code}")
    print(f"max_unauthenticated: {limit if limit is not None else 'none'}; mode {args.mode}")
    print(f"{args.connections} unauthenticated connections: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
          f"(+{growth:.1f} MiB); closed by the server within {args.settle:g} s: {closed}")
    print(f"goal <= {GOAL_MIB:g} MiB: {'met' if growth <= GOAL_MIB else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

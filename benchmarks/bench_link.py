"""Remote-link throughput: READs of 1 MiB and of 4 KiB with 8 in flight, against a plain asyncio
TCP stream and the same stream over TLS.

The server end (a LinkServer whose volume returns a prebuilt block, and bare asyncio stream
servers, one in clear and one TLS 1.3, that answer an 8-byte length with that many bytes) runs in
a child process, the client end in this one, so each side has its own core as two arrays would.
The plain stream has no framing, no CRC, no request ids, no tags: it is the ceiling for Python on
this loop, not a competing protocol. The TLS stream shows what TLS alone costs on that ceiling
(the alternative to the link's per-frame HMAC); it needs the ``openssl`` command for a throw-away
self-signed certificate.

    .venv/bin/python benchmarks/bench_link.py                   # uvloop and asyncio, 3 s each
    .venv/bin/python benchmarks/bench_link.py --loop uvloop --seconds 5 --sizes 4MiB --inflight 16
    .venv/bin/python benchmarks/bench_link.py --tree /tmp/old-checkout   # another version's link code
    .venv/bin/python benchmarks/bench_link.py --cpu   # CPU per frame: HMAC tag vs TLS, one process
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if "--tree" in sys.argv:  # the link code of another checkout (spawned children see the same argv)
    ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(ROOT))

from storaged.backstore.base import Extent
from storaged.remote.api import VolumeInfo
from storaged.remote.link import LinkServer, PeerLink

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


def make_cert(directory: str) -> tuple[str, str] | str:
    """A self-signed P-256 certificate and key, or why there is none."""
    cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-subj", "/CN=storaged-bench", "-days", "1", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"no certificate: {e}"
    return cert, key


def tls_contexts(cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    client.check_hostname = False
    return server, client


async def serve(block: int, cert: tuple[str, str] | str, conn: Any) -> None:
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
    tls_port = 0
    if isinstance(cert, tuple):
        tls_srv = await asyncio.start_server(plain, "127.0.0.1", 0, ssl=tls_contexts(*cert)[0])
        tls_port = tls_srv.sockets[0].getsockname()[1]
    conn.send((link_port, plain_srv.sockets[0].getsockname()[1], tls_port))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
    plain_srv.close()
    await server.close()


def server_main(kind: str, block: int, cert: tuple[str, str] | str, conn: Any) -> None:
    run_loop(kind, serve(block, cert, conn))


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


async def bench_plain(port: int, block: int, inflight: int, seconds: float,
                      tls: ssl.SSLContext | None = None) -> float:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
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


# --- CPU cost of the two integrity options, in one process (insensitive to scheduling) -------


def tls_pair(cert: str, key: str) -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    """A client and a server TLS object wired back to back through memory BIOs, handshake done."""
    sctx, cctx = tls_contexts(cert, key)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = cctx.wrap_bio(c_in, c_out, server_hostname="storaged-bench")
    s = sctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return c, s, [c_out, s_in]


def cpu_costs(cert: tuple[str, str] | str, sizes: list[int], seconds: float = 1.0) -> list[str]:
    """Microseconds per frame: tag seal + verify (both ends' work) against TLS write + read."""
    from storaged.remote import integrity

    lines = []
    for size in sizes:
        data = bytes(range(256)) * (size // 256)
        head = bytes(28)
        tx, rx = integrity.FrameMac(b"k" * 32), integrity.FrameMac(b"k" * 32)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sealed = tx.seal([head, data])
            assert rx.verify(head, sealed[0][28:], data)
            n += 1
        mac_us = (time.perf_counter() - start) / n * 1e6
        tls = "n/a"
        if isinstance(cert, tuple):
            c, s, (c_out, s_in) = tls_pair(*cert)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                c.write(data)
                s_in.write(c_out.read())
                got = 0
                while got < size:
                    got += len(s.read(size - got))
                n += 1
            tls = f"{(time.perf_counter() - start) / n * 1e6:8.1f} us"
        lines.append(f"{size >> 10:6d} KiB frame: HMAC-SHA256 tag seal+verify {mac_us:8.1f} us   "
                     f"TLS 1.3 ({ssl.OPENSSL_VERSION.split()[1]}) encrypt+decrypt {tls}")
    return lines


def run_size(kind: str, block: int, args: argparse.Namespace, cert: tuple[str, str] | str) -> str:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(kind, block, cert, child), daemon=True)
    proc.start()
    try:
        link_port, plain_port, tls_port = parent.recv()
        link_mbs = run_loop(kind, bench_link(link_port, block, args.inflight, args.seconds))
        plain_mbs = run_loop(kind, bench_plain(plain_port, block, args.inflight, args.seconds))
        tls_mbs = (run_loop(kind, bench_plain(tls_port, block, args.inflight, args.seconds,
                                              tls_contexts(*cert)[1])) if isinstance(cert, tuple) else None)
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()

    def fig(mbs: float) -> str:
        return f"{mbs:7.0f} MB/s {mbs * 1e6 / block:8.0f} op/s"

    tls = f"{fig(tls_mbs)}  TLS/plain {tls_mbs / plain_mbs:4.2f}" if tls_mbs else f"n/a ({cert})"
    return (f"{kind:8s} {block >> 10:6d} KiB  link {fig(link_mbs)}  plain {fig(plain_mbs)}  "
            f"link/plain {link_mbs / plain_mbs:4.2f}   plain+TLS {tls}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    ap.add_argument("--sizes", default="1MiB,4KiB", help="READ sizes, comma-separated (default 1MiB,4KiB)")
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tree", default=str(ROOT), help="checkout whose storaged package the link runs")
    ap.add_argument("--cpu", action="store_true", help="only the CPU cost per frame of tags vs TLS, in-process")
    args = ap.parse_args()
    blocks = [parse_size(s) for s in args.sizes.split(",")]
    kinds = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    print(f"READs, {args.inflight} in flight, {args.seconds:g} s each, server in a child process; link code "
          f"from {ROOT}")
    with tempfile.TemporaryDirectory() as tmp:
        cert = make_cert(tmp)
        if args.cpu:
            for line in cpu_costs(cert, blocks):
                print(line)
            return 0
        for kind in kinds:
            for block in blocks:
                print(run_size(kind, block, args, cert), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

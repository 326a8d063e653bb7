"""Command line: ``storaged-faultproxy --listen HOST:PORT --upstream HOST:PORT [faults...]``.

Live changes come as command lines (see :mod:`storaged.faultproxy.control`) on stdin and, with
``--control HOST:PORT`` (loopback only), on a TCP line protocol. Answers and stats go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
import threading

from .control import CommandError, apply_command, format_faults, format_stats, parse_rate
from .faults import Faults
from .proxy import FaultProxy

SHUTDOWN = ("shutdown", "exit")


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    if not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, int(port)


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except CommandError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="storaged-faultproxy",
        description="A TCP proxy that injects link faults (delay, jitter, bandwidth, loss-like stalls, "
        "hangs, cuts, refusals) between two storaged arrays' remote links. Type 'help' on stdin.")
    ap.add_argument("--listen", type=parse_hostport, required=True, metavar="HOST:PORT",
                    help="where clients connect (port 0 picks one; printed at start)")
    ap.add_argument("--upstream", type=parse_hostport, required=True, metavar="HOST:PORT",
                    help="where connections are forwarded")
    ap.add_argument("--delay", type=float, default=0.0, metavar="S", help="added to every chunk, each way")
    ap.add_argument("--jitter", type=float, default=0.0, metavar="S", help="extra random delay in [0, S]")
    ap.add_argument("--bandwidth", type=_rate, default=None, metavar="BYTES/S",
                    help="per direction and connection, e.g. 1000000, 10M, 1MiB")
    ap.add_argument("--loss", type=float, default=0.0, metavar="P",
                    help="probability per chunk of a retransmission-like delay")
    ap.add_argument("--loss-penalty", type=float, default=0.2, metavar="S", help="that delay (default 0.2)")
    ap.add_argument("--control", type=parse_hostport, metavar="HOST:PORT",
                    help="also take commands on this TCP address (loopback only)")
    ap.add_argument("--stats-interval", type=float, default=0.0, metavar="S",
                    help="print a stats line every S seconds (0: only on 'stats' and at exit)")
    ap.add_argument("--connect-timeout", type=float, default=5.0, metavar="S")
    ap.add_argument("--seed", type=int, help="make jitter and loss reproducible")
    ap.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    ap.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = ap.parse_args(argv)
    if args.control and not _is_loopback(args.control[0]):
        ap.error("--control must be a loopback address (127.0.0.1, ::1 or localhost)")
    return args


def say(line: str) -> None:
    print(line, flush=True)


async def _serve_control(proxy: FaultProxy, stop: asyncio.Event,
                         reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            text = line.decode("utf-8", "replace").strip()
            if text.lower() in ("quit", "bye"):
                break
            if text.lower() in SHUTDOWN:
                writer.write(b"ok shutting down\n")
                await writer.drain()
                stop.set()
                break
            answer = apply_command(proxy, text)
            if text:
                say(f"control: {text} -> {answer}")
            writer.write(answer.encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def _read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """In a daemon thread (stdin may be a tty, a pipe or a file): lines into the loop's queue."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
    except (OSError, ValueError, RuntimeError):
        pass
    try:
        loop.call_soon_threadsafe(queue.put_nowait, None)
    except RuntimeError:
        pass  # the loop is gone


async def _stdin_commands(proxy: FaultProxy, stop: asyncio.Event) -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_read_stdin, args=(asyncio.get_running_loop(), queue),
                     name="stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        text = line.strip()
        if text.lower() in SHUTDOWN:
            stop.set()
            return
        if text:
            say(apply_command(proxy, text))
    # stdin closed (e.g. </dev/null): keep running; stop with a signal or the control port


async def _stats_ticker(proxy: FaultProxy, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        say(format_stats(proxy))


async def run(args: argparse.Namespace) -> int:
    faults = Faults.symmetric(delay=args.delay, jitter=args.jitter, bandwidth=args.bandwidth,
                              loss=args.loss, loss_penalty=args.loss_penalty)
    proxy = FaultProxy(tuple(args.listen), tuple(args.upstream), faults,
                       connect_timeout=args.connect_timeout, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = await proxy.start()
    say(f"faultproxy listening on {host}:{port} -> {args.upstream[0]}:{args.upstream[1]}")
    say(format_faults(faults))
    control: asyncio.Server | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        if args.control:
            control = await asyncio.start_server(lambda r, w: _serve_control(proxy, stop, r, w),
                                                 *args.control, reuse_address=True)
            chost, cport = control.sockets[0].getsockname()[:2]
            say(f"faultproxy control on {chost}:{cport}")
        if not args.no_stdin:
            tasks.append(asyncio.create_task(_stdin_commands(proxy, stop)))
        if args.stats_interval > 0:
            tasks.append(asyncio.create_task(_stats_ticker(proxy, args.stats_interval)))
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if control is not None:
            control.close()
        await proxy.close()
        say(format_stats(proxy))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args))
    except OSError as exc:
        print(f"storaged-faultproxy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

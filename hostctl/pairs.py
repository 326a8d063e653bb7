"""Remote copy from the host: the HORCM-style pair commands (docs/replication.md, process numbers 16-26).

=================  ======================  ==========================================================
hostctl            HORCM / CCI             process(es) and where they run
=================  ======================  ==========================================================
``paircreate``     paircreate              PAIR_CREATE on the S-VOL's array (then PAIR_DISPLAY polls)
``pairdisplay``    pairdisplay             PAIR_DISPLAY on ``--array``
``pairsplit``      pairsplit [-rw]         PAIR_SPLIT on ``--array``
``pairresync``     pairresync              PAIR_RESYNC on the S-VOL's array (``--array``, required)
``pairdelete``     pairsplit -S            PAIR_DELETE on ``--array``
``pairrelease``    (fence release)         PAIR_RELEASE on ``--array`` (a FENCED primary)
``replicate``      (UR journal copy)       JOURNAL_STATUS/ACQUIRE/RESTORE/PURGE: the Fig. 16 loop
``pairsyncwait``   pairsyncwait            PAIR_SYNCWAIT on ``--array`` (the S-VOL side)
``takeover``       horctakeover            TAKEOVER on ``--array`` (the S-VOL side)
=================  ======================  ==========================================================

Every command takes the Host (routing), the per-command timeout and the output streams, and returns
the exit code; failures are :class:`~hostctl.errors.HostctlError` subclasses, printed by the CLI as
one line. The renderers live in :mod:`hostctl.render`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .client import CommandDeviceClient, Host, Process
from .errors import EXIT_OK, CommandTimeout, PairStateError, ProtocolError, UsageError
from .render import (
    cell,
    duration,
    group_copy_percent,
    group_state_table,
    percent_text,
    progress_bar,
    render_pair_groups,
    render_takeover,
    table,
)

COMMANDS = (
    "paircreate",
    "pairdisplay",
    "pairsplit",
    "pairresync",
    "pairdelete",
    "pairrelease",
    "replicate",
    "pairsyncwait",
    "takeover",
)

#: paircreate --wait: seconds between PAIR_DISPLAY polls
POLL_INTERVAL = 0.5
#: paircreate --wait without a TTY: at most one percentage line per this many seconds (state changes
#: are always printed)
PROGRESS_LINE_EVERY = 5.0
#: states from which a group does not reach PAIR by itself: paircreate --wait gives up (exit 1)
STOP_STATES = frozenset({"PSUE", "PSUS", "SMPL", "SSWS"})
#: the sleep between rounds of ``replicate --follow`` (a hook for tests)
sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


# --- parsing the command line ----------------------------------------------------------------


def parse_volume(text: str) -> tuple[str, int]:
    """``site-a:0`` -> ("site-a", 0)."""
    array, sep, lun = text.rpartition(":")
    if not sep or not array.strip():
        raise argparse.ArgumentTypeError(f"expected ARRAY:LUN (e.g. site-a:0), got {text!r}")
    return array.strip(), parse_lun(lun)


def parse_lun(text: str) -> int:
    try:
        n = int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a LUN number, got {text!r}") from None
    if not 0 <= n < 16384:
        raise argparse.ArgumentTypeError(f"LUN numbers are 0..16383, got {n}")
    return n


def parse_group(text: str) -> str:
    g = text.strip()
    if not g or len(g) > 64 or any(c.isspace() for c in g):
        raise argparse.ArgumentTypeError(f"expected a group name (1-64 characters, no spaces), got {text!r}")
    return g


def parse_seq(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a sequence number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"sequence numbers are 0 or more, got {n}")
    return n


def check_args(args: argparse.Namespace) -> None:
    """What argparse cannot check, before any device is opened (UsageError, exit 2)."""
    cmd = args.command
    if cmd == "paircreate":
        (parray, _), (sarray, _) = args.pvol, args.svol
        if parray == sarray:
            raise UsageError(f"--pvol and --svol are both on {parray}: remote copy needs two arrays")
        if args.array and args.array != sarray:
            raise UsageError(
                f"paircreate runs on the S-VOL's array ({sarray}), not --array {args.array}; drop --array"
            )
    elif cmd == "pairresync" and not args.array:
        raise UsageError("pairresync runs on the S-VOL's array: name it with --array NAME")
    elif cmd == "replicate" and args.primary == args.secondary:
        raise UsageError(f"--primary and --secondary are both {args.primary}")


def overall_bound(args: argparse.Namespace, timeout: float) -> float | None:
    """A ceiling on the whole command (a guard against hangs), or None for ``replicate --follow``."""
    cmd = args.command
    if cmd == "replicate":
        return None if args.follow else timeout * 6 + 10
    if cmd == "paircreate" and args.wait:
        return timeout * 4 + 10
    if cmd == "pairsyncwait":
        wait = args.wait_timeout if args.wait_timeout is not None else timeout
        return wait + timeout * 5 + 10
    return timeout * 2 + 10


# --- helpers -----------------------------------------------------------------------------------


@dataclass
class Ctx:
    host: Host
    timeout: float
    out: TextIO
    err: TextIO
    json: bool

    def print_json(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _data(resp: Any) -> dict[str, Any]:
    return resp.data if isinstance(resp.data, dict) else {}


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def find_group(data: dict[str, Any], group: str) -> dict[str, Any] | None:
    for g in data.get("groups") or []:
        if isinstance(g, dict) and g.get("group") == group:
            return g
    return None


async def run(args: argparse.Namespace, host: Host, timeout: float, out: TextIO, err: TextIO) -> int:
    ctx = Ctx(host, timeout, out, err, bool(args.json))
    fn = {
        "paircreate": paircreate,
        "pairdisplay": pairdisplay,
        "pairsplit": pairsplit,
        "pairresync": pairresync,
        "pairdelete": pairdelete,
        "pairrelease": pairrelease,
        "replicate": replicate,
        "pairsyncwait": pairsyncwait,
        "takeover": takeover,
    }[args.command]
    return await fn(ctx, args)


# --- paircreate ----------------------------------------------------------------------------------


class Progress:
    """paircreate --wait's progress on stderr.

    On a TTY (and not --json): one bar redrawn in place with ``\\r``. Otherwise: a line
    ``paircreate g1: COPY 42%`` on the first update, on every state change, and at most every
    ``every`` seconds while the percentage moves. ``enabled=False`` (--no-progress) prints nothing.
    """

    def __init__(
        self,
        stream: TextIO,
        group: str,
        *,
        tty: bool,
        enabled: bool = True,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.group = group
        self.tty = tty
        self.enabled = enabled
        self.every = PROGRESS_LINE_EVERY if every is None else every
        self.clock = clock
        self._drawn = 0  # width of the bar line on screen (TTY)
        self._last: tuple[str, str] | None = None  # (state, percent text) of the last line
        self._last_at = 0.0

    def update(self, state: str, percent: float | None) -> None:
        if not self.enabled:
            return
        pct = percent_text(percent) if percent is not None else "-"
        if self.tty:
            text = f"{self.group}  {state:<4}  {progress_bar(percent)}  {pct:>6}"
            pad = max(0, self._drawn - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
            self._drawn = len(text)
            return
        now = self.clock()
        last = self._last
        if last is None or last[0] != state or (last[1] != pct and now - self._last_at >= self.every):
            self.stream.write(f"paircreate {self.group}: {state} {pct}\n")
            self.stream.flush()
            self._last = (state, pct)
            self._last_at = now

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


async def paircreate(ctx: Ctx, args: argparse.Namespace) -> int:
    (parray, plun), (sarray, slun) = args.pvol, args.svol
    params = {
        "group": args.group,
        "peer": parray,
        "pvol": plun,
        "svol": slun,
        "pjnl": args.pjnl,
        "sjnl": args.sjnl,
    }
    if getattr(args, "starget", ""):
        params["target"] = args.starget
    if getattr(args, "ptarget", ""):
        params["peer_target"] = args.ptarget
    client = await ctx.host.client(sarray)
    resp = await client.run(Process.PAIR_CREATE, params, timeout=ctx.timeout)
    data = _data(resp)
    if not args.wait:
        if ctx.json:
            ctx.print_json(data)
        else:
            ctx.line(_create_table(args, data))
        return EXIT_OK
    if not ctx.json:
        ctx.line(_create_table(args, data))
    progress = Progress(
        ctx.err, args.group, tty=_isatty(ctx.err) and not ctx.json, enabled=not args.no_progress
    )
    try:
        group = await wait_for_pair(client, args.group, ctx.timeout, progress)
    finally:
        progress.close()
    if ctx.json:
        ctx.print_json(group)
    else:
        ctx.line("")
        ctx.line(render_pair_groups({"groups": [group]}, client.array))
    return EXIT_OK


def _create_table(args: argparse.Namespace, data: dict[str, Any]) -> str:
    (parray, plun), (sarray, slun) = args.pvol, args.svol
    return table(
        ["GROUP", "P-VOL", "S-VOL", "P-JNL", "S-JNL", "STATE"],
        [
            [
                data.get("group") or args.group,
                f"{parray}:{plun}",
                f"{sarray}:{slun}",
                f"{parray}:{args.pjnl}",
                f"{sarray}:{args.sjnl}",
                data.get("state"),
            ]
        ],
    )


async def wait_for_pair(
    client: CommandDeviceClient, group: str, timeout: float, progress: Progress
) -> dict[str, Any]:
    """Poll PAIR_DISPLAY every POLL_INTERVAL until the group is PAIR (returns its entry), stops in
    PSUE/PSUS/SMPL/SSWS (PairStateError, exit 1) or ``timeout`` passes (CommandTimeout, exit 4)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state, pct = "?", None
    while True:
        left = deadline - loop.time()
        resp = await client.run(Process.PAIR_DISPLAY, {"group": group}, timeout=min(timeout, max(1.0, left)))
        entry = find_group(_data(resp), group)
        if entry is None:
            raise PairStateError(f"{client.where}: group {group} is SMPL: it no longer exists there")
        state = str(entry.get("state") or "?")
        pct = group_copy_percent(entry)
        if state == "PAIR":
            progress.update(state, 100.0 if pct is None else pct)
            return entry
        progress.update(state, pct)
        if state in STOP_STATES:
            why = " ".join(str(entry.get("error") or "").split())
            raise PairStateError(f"{client.where}: group {group} is {state}" + (f": {why}" if why else ""))
        left = deadline - loop.time()
        if left <= 0:
            raise CommandTimeout(
                f"{client.where}: group {group} did not reach PAIR within {timeout:g}s "
                f"(still {state}, {percent_text(pct) if pct is not None else '-'} copied)"
            )
        await asyncio.sleep(min(POLL_INTERVAL, left))


# --- pairdisplay, pairsplit, pairresync, pairdelete -------------------------------------------


async def pairdisplay(ctx: Ctx, args: argparse.Namespace) -> int:
    client = await ctx.host.client(args.array)
    params = {"group": args.group} if args.group else {}
    data = _data(await client.run(Process.PAIR_DISPLAY, params, timeout=ctx.timeout))
    if ctx.json:
        ctx.print_json(data)
    elif args.group and not find_group(data, args.group) and not data.get("groups"):
        ctx.line(f"(no group {args.group} on {client.array}: SMPL)")
    else:
        ctx.line(render_pair_groups(data, client.array))
    return EXIT_OK


async def _state_change(ctx: Ctx, args: argparse.Namespace, process: Process, params: dict[str, Any]) -> int:
    client = await ctx.host.client(args.array)
    data = _data(await client.run(process, params, timeout=ctx.timeout))
    if ctx.json:
        ctx.print_json(data)
    else:
        ctx.line(
            group_state_table([(data.get("group") or args.group, client.array, data.get("state"), data)])
        )
    return EXIT_OK


async def pairsplit(ctx: Ctx, args: argparse.Namespace) -> int:
    return await _state_change(ctx, args, Process.PAIR_SPLIT, {"group": args.group, "rw": bool(args.rw)})


async def pairresync(ctx: Ctx, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"group": args.group, "force": bool(args.force)}
    if args.swap:
        params["swap"] = True
    return await _state_change(ctx, args, Process.PAIR_RESYNC, params)


async def pairdelete(ctx: Ctx, args: argparse.Namespace) -> int:
    return await _state_change(ctx, args, Process.PAIR_DELETE, {"group": args.group})


async def pairrelease(ctx: Ctx, args: argparse.Namespace) -> int:
    return await _state_change(ctx, args, Process.PAIR_RELEASE, {"group": args.group})


# --- replicate: the host loop of Fig. 16 -----------------------------------------------------------


class Replicator:
    """One journal group's copy loop, run from the host (the arrays also run it by themselves).

    One :meth:`round`::

        JOURNAL_STATUS  primary                      -> journal_in
        JOURNAL_ACQUIRE secondary {group, upto: journal_in}
        JOURNAL_STATUS  secondary                    -> read_completed, to_be_read, read_seq
        if read_completed == to_be_read (everything asked for is read and durable):
            JOURNAL_RESTORE secondary {group, upto: read_completed}
            JOURNAL_PURGE   primary   {group, upto_pos: read_completed, upto_seq: read_seq}
    """

    def __init__(
        self, primary: CommandDeviceClient, secondary: CommandDeviceClient, group: str, timeout: float
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.group = group
        self.timeout = timeout
        self.rounds = 0
        self._read_seq: int | None = None  # read_seq after the previous round
        self._restored_seq: int | None = None  # read_seq at the previous restore

    async def _run(
        self, client: CommandDeviceClient, process: Process, params: dict[str, Any]
    ) -> dict[str, Any]:
        return _data(await client.run(process, params, timeout=self.timeout))

    async def round(self) -> dict[str, Any]:
        g = self.group
        self.rounds += 1
        pst = await self._run(self.primary, Process.JOURNAL_STATUS, {"group": g})
        if "journal_in" not in pst:
            raise ProtocolError(f"{self.primary.where}: JOURNAL_STATUS of {g} has no journal_in")
        # up to what the primary has made durable (older arrays report journal_in only)
        acq = await self._run(
            self.secondary, Process.JOURNAL_ACQUIRE, {"group": g, "upto": pst.get("durable_in", pst["journal_in"])}
        )
        sst = await self._run(self.secondary, Process.JOURNAL_STATUS, {"group": g})
        read_completed, to_be_read = sst.get("read_completed"), sst.get("to_be_read")
        read_seq = _int(sst.get("read_seq"))
        rst = pur = None
        complete = read_completed is not None and read_completed == to_be_read
        copying = str(sst.get("state") or "").upper() == "COPY"
        if complete and not copying:
            rst = await self._run(
                self.secondary, Process.JOURNAL_RESTORE, {"group": g, "upto": read_completed}
            )
        # the primary may free only what is restored here: the secondary ring mirrors its positions
        purge_pos = rst.get("restoration_completed") if rst is not None else None
        purge_seq = _int(rst.get("restored_seq")) if rst is not None else None
        if purge_pos is not None and purge_seq is not None:
            pur = await self._run(
                self.primary,
                Process.JOURNAL_PURGE,
                {"group": g, "upto_pos": purge_pos, "upto_seq": purge_seq},
            )
        acquired = _int(acq.get("acquired"))
        if acquired is None and read_seq is not None and self._read_seq is not None:
            acquired = read_seq - self._read_seq
        restored = _int(rst.get("restored")) if rst is not None else 0
        if rst is not None and restored is None and read_seq is not None and self._restored_seq is not None:
            restored = read_seq - self._restored_seq
        if read_seq is not None:
            self._read_seq = read_seq
            if rst is not None:
                self._restored_seq = read_seq
        lag = None
        for d in (sst, rst or {}, acq, pst):
            if d.get("lag_seconds") is not None:
                lag = d["lag_seconds"]
                break
        return {
            "round": self.rounds,
            "group": g,
            "primary": pst,
            "acquire": acq,
            "secondary": sst,
            "restore": rst,
            "purge": pur,
            "complete": complete,
            "copying": copying,
            "acquired": acquired,
            "restored": restored,
            "purged_to_seq": purge_seq if pur is not None else None,
            "lag_seconds": lag,
        }


def round_text(r: dict[str, Any]) -> str:
    parts = [f"round {r['round']}", f"acquired {cell(r.get('acquired'))}"]
    if r.get("complete"):
        if r.get("copying"):
            parts.append("restore waits (initial copy running)")
        else:
            parts.append(f"restored {cell(r.get('restored'))}")
        if r.get("purge") is not None:
            parts.append(f"purged to seq {cell(r.get('purged_to_seq'))}")
    else:
        sst = r.get("secondary") or {}
        parts.append(
            f"restore waits (read-completed {cell(sst.get('read_completed'))}, "
            f"to-be-read {cell(sst.get('to_be_read'))})"
        )
    lag = r.get("lag_seconds")
    parts.append(
        f"lag {duration(lag) if isinstance(lag, (int, float)) and not isinstance(lag, bool) else cell(lag)}"
    )
    return "  ".join(parts)


async def replicate(ctx: Ctx, args: argparse.Namespace) -> int:
    primary = await ctx.host.client(args.primary)
    secondary = await ctx.host.client(args.secondary)
    rep = Replicator(primary, secondary, args.group, ctx.timeout)
    try:
        while True:
            r = await rep.round()
            if ctx.json:
                ctx.line(json.dumps(r, sort_keys=True, separators=(",", ":")))
            else:
                ctx.line(round_text(r))
            if args.once:
                return EXIT_OK
            await sleep(args.interval)
    except (KeyboardInterrupt, asyncio.CancelledError):
        if args.once:
            raise
        # Ctrl-C: asyncio.run cancels the main task (or the interrupt lands here directly). The
        # command in flight, if any, is abandoned: the array frees its slot by expiry.
        ctx.err.write(f"hostctl: replicate {args.group}: stopped after {rep.rounds} round(s)\n")
        ctx.err.flush()
        return EXIT_OK


# --- pairsyncwait, takeover --------------------------------------------------------------------


SYNC_RESULTS = {"DONE": EXIT_OK}


async def pairsyncwait(ctx: Ctx, args: argparse.Namespace) -> int:
    client = await ctx.host.client(args.array)
    wait = args.wait_timeout if args.wait_timeout is not None else ctx.timeout
    # Without --seq the array takes the primary's newest sequence number now (HORCM's Q-marker).
    params: dict[str, Any] = {"group": args.group, "timeout": wait}
    if args.seq is not None:
        params["seq"] = args.seq
    data = _data(await client.run(Process.PAIR_SYNCWAIT, params, timeout=wait + ctx.timeout))
    result = str(data.get("result") or "").upper()
    seq = data.get("seq", args.seq)
    if ctx.json:
        ctx.print_json(data)
    else:
        ctx.line(
            table(
                ["GROUP", "ARRAY", "SEQ", "RESTORED", "RESULT"],
                [[args.group, client.array, seq, data.get("restored_seq"), result]],
                right=(2, 3),
            )
        )
    why = " ".join(str(data.get("error") or data.get("reason") or "").split())
    if result == "DONE":
        return EXIT_OK
    if result == "TIMEOUT":
        what = f"sequence {seq}" if seq is not None else "the primary's newest sequence number"
        raise CommandTimeout(
            f"{client.where}: group {args.group}: TIMEOUT: {what} not restored within {wait:g}s"
            + (f" ({why})" if why else "")
        )
    if result == "BROKEN":
        raise PairStateError(
            f"{client.where}: group {args.group}: BROKEN"
            + (f": {why}" if why else ": the group is suspended or gone (see pairdisplay)")
        )
    raise ProtocolError(f"{client.where}: PAIR_SYNCWAIT answered result {data.get('result')!r}")


async def takeover(ctx: Ctx, args: argparse.Namespace) -> int:
    client = await ctx.host.client(args.array)
    params = {"group": args.group, "dry_run": bool(args.dry_run)}
    data = _data(await client.run(Process.TAKEOVER, params, timeout=ctx.timeout))
    if ctx.json:
        ctx.print_json(data)
    else:
        ctx.line(render_takeover(data, args.group, client.array, bool(args.dry_run)))
    return EXIT_OK

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

This module dispatches (:func:`run`) and keeps paircreate and ``replicate``'s loop, whose timing
knobs (POLL_INTERVAL, PROGRESS_LINE_EVERY, ``sleep``) are module globals that tests patch here. The
other commands live in sibling modules and are re-exported, so ``hostctl.pairs.X`` keeps working:
:mod:`hostctl.pair_args` (argument types and checks), :mod:`hostctl.pair_ctx` (Ctx, response
readers), :mod:`hostctl.pair_state` (pairdisplay, pairsplit, pairresync, pairdelete, pairrelease),
:mod:`hostctl.replicator` (Replicator, the Fig. 16 round) and :mod:`hostctl.pair_takeover`
(pairsyncwait, takeover).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from .client import CommandDeviceClient, Host, Process
from .errors import EXIT_OK, CommandTimeout, PairStateError
from .pair_args import check_args, overall_bound, parse_group, parse_lun, parse_seq, parse_volume
from .pair_ctx import Ctx, _data, find_group
from .pair_state import pairdelete, pairdisplay, pairrelease, pairresync, pairsplit
from .pair_takeover import SYNC_RESULTS, pairsyncwait, takeover
from .render import group_copy_percent, percent_text, progress_bar, render_pair_groups, table
from .replicator import Replicator, round_text

__all__ = [
    "COMMANDS",
    "POLL_INTERVAL",
    "PROGRESS_LINE_EVERY",
    "STOP_STATES",
    "SYNC_RESULTS",
    "Ctx",
    "Progress",
    "Replicator",
    "check_args",
    "find_group",
    "overall_bound",
    "paircreate",
    "pairdelete",
    "pairdisplay",
    "pairrelease",
    "pairresync",
    "pairsplit",
    "pairsyncwait",
    "parse_group",
    "parse_lun",
    "parse_seq",
    "parse_volume",
    "replicate",
    "round_text",
    "run",
    "sleep",
    "takeover",
    "wait_for_pair",
]


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


# --- replicate: the host loop of Fig. 16 (Replicator is in hostctl.replicator) -------------------


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

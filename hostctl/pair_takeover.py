"""The S-VOL side's failover commands: pairsyncwait (wait until a sequence number is restored) and
takeover (horctakeover); their results map to exit codes, not just tables."""

from __future__ import annotations

import argparse
from typing import Any

from .client import Process
from .errors import EXIT_OK, CommandTimeout, PairStateError, ProtocolError
from .pair_ctx import Ctx, _data
from .render import render_takeover, table

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

"""pairdisplay and the one-shot state changes (pairsplit, pairresync, pairdelete, pairrelease): one
command to one array, its answer printed as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from .client import Process
from .errors import EXIT_OK
from .pair_ctx import Ctx, _data, find_group
from .render import group_state_table, render_pair_groups


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

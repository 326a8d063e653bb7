"""The live-change command language (stdin and ``--control``), independent of any I/O.

One command per line; the answer is always one line: ``ok ...``, ``error: ...``, or for
``stats`` and ``show`` the report (``stats k=v ...``, ``faults ...``). A trailing direction word
(``c2s``, ``s2c``, ``both``; default both) limits a link fault to one direction.

    delay S [DIR]            jitter S [DIR]           bandwidth BYTES/S|off [DIR]
    loss P [PENALTY_S] [DIR] drop-after BYTES|off [DIR]
    stall [DIR]              resume [DIR]
    cut                      refuse on|off
    down  (refuse on + cut)  up  (refuse off + resume both ways)
    clear (no faults at all) stats   show   help
"""

from __future__ import annotations

import re

from .faults import DirectionOrBoth, Faults, LinkFaults
from .proxy import FaultProxy

HELP = ("commands: delay S | jitter S | bandwidth B/s|off | loss P [PENALTY] | drop-after N|off | stall "
        "| resume [c2s|s2c|both] ; cut | refuse on|off | down | up | clear | stats | show | help")

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]i?)?b?(?:/s)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


class CommandError(ValueError):
    pass


def parse_bytes(text: str) -> float:
    """``1000``, ``64k``, ``10M``, ``1MiB``, ``1MiB/s``: bytes (or bytes per second); k/M/G are
    powers of 10, Ki/Mi/Gi powers of 2."""
    m = _SIZE.match(text.strip())
    if not m:
        raise CommandError(f"not a byte count or rate: {text!r}")
    return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def parse_rate(text: str) -> float:
    value = parse_bytes(text)
    if value <= 0:
        raise CommandError(f"rate must be > 0: {text!r}")
    return value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, not {text!r}") from None
    if value < 0:
        raise CommandError(f"{what} must be >= 0, not {text!r}")
    return value


def format_stats(proxy: FaultProxy) -> str:
    s = proxy.stats.as_dict()
    queued = proxy.queued()
    s["queued_c2s"], s["queued_s2c"] = queued["c2s"], queued["s2c"]
    return "stats " + " ".join(f"{k}={v}" for k, v in s.items())


def format_faults(faults: Faults) -> str:
    return (f"faults refuse={'on' if faults.refuse else 'off'} | "
            f"c2s {faults.c2s.describe()} | s2c {faults.s2c.describe()}")


def apply_command(proxy: FaultProxy, line: str) -> str:
    """Run one command line against ``proxy``; returns the answer (never raises on bad input)."""
    try:
        return _apply(proxy, line.split())
    except (CommandError, ValueError, TypeError) as exc:
        return f"error: {exc}"


def _apply(proxy: FaultProxy, words: list[str]) -> str:
    if not words:
        return "ok"
    cmd, args = words[0].lower(), words[1:]
    direction: DirectionOrBoth = "both"
    if args and args[-1].lower() in ("c2s", "s2c", "both"):
        direction = args.pop().lower()  # type: ignore[assignment]
    faults = proxy.faults

    def need(n_min: int, n_max: int, usage: str) -> None:
        if not n_min <= len(args) <= n_max:
            raise CommandError(f"usage: {usage}")

    if cmd == "delay":
        need(1, 1, "delay SECONDS [c2s|s2c|both]")
        faults.set(direction, delay=_number(args[0], "delay"))
    elif cmd == "jitter":
        need(1, 1, "jitter SECONDS [c2s|s2c|both]")
        faults.set(direction, jitter=_number(args[0], "jitter"))
    elif cmd in ("bandwidth", "bw", "rate"):
        need(1, 1, "bandwidth BYTES_PER_S|off [c2s|s2c|both]")
        off = args[0].lower() in ("off", "none", "0")
        faults.set(direction, bandwidth=None if off else parse_rate(args[0]))
    elif cmd == "loss":
        need(1, 2, "loss PROBABILITY [PENALTY_SECONDS] [c2s|s2c|both]")
        changes = {"loss": _number(args[0], "loss")}
        if len(args) == 2:
            changes["loss_penalty"] = _number(args[1], "loss penalty")
        faults.set(direction, **changes)
    elif cmd in ("drop-after", "drop_after", "drop"):
        need(1, 1, "drop-after BYTES|off [c2s|s2c|both]")
        faults.set(direction, drop_after_bytes=None if args[0].lower() in ("off", "none") else
                   int(parse_bytes(args[0])))
    elif cmd in ("stall", "hang"):
        need(0, 0, "stall [c2s|s2c|both]")
        faults.set(direction, stall=True)
    elif cmd == "resume":
        need(0, 0, "resume [c2s|s2c|both]")
        faults.set(direction, stall=False)
    elif cmd == "cut":
        need(0, 0, "cut")
        return f"ok cut {proxy.cut()} connection(s)"
    elif cmd == "refuse":
        need(1, 1, "refuse on|off")
        if args[0].lower() not in ("on", "off"):
            raise CommandError("usage: refuse on|off")
        faults.refuse = args[0].lower() == "on"
    elif cmd == "down":
        need(0, 0, "down")
        faults.refuse = True
        return f"ok link down: refusing, cut {proxy.cut()} connection(s)"
    elif cmd == "up":
        need(0, 0, "up")
        faults.refuse = False
        faults.set("both", stall=False)
    elif cmd == "clear":
        need(0, 0, "clear")
        faults.refuse = False
        for d in ("c2s", "s2c"):
            faults.direction(d).update(**{k: v for k, v in vars(LinkFaults()).items()})
    elif cmd == "stats":
        return format_stats(proxy)
    elif cmd == "show":
        return format_faults(faults)
    elif cmd in ("help", "?"):
        return HELP
    else:
        raise CommandError(f"unknown command {cmd!r}; try help")
    return "ok"

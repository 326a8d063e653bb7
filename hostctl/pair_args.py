"""The pair commands' argument types and the checks argparse cannot make (run before any device is
opened, so a bad command line exits 2 without touching an array)."""

from __future__ import annotations

import argparse

from .errors import UsageError


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

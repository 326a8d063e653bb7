"""hostctl: drive storaged arrays through their command devices (``python -m hostctl``).

``main(argv) -> int`` is the whole CLI; it never calls sys.exit, so tests can call it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any, NoReturn, TextIO

from . import __version__, pairs
from .client import Host, Process, parse_process
from .config import DEFAULT_PATH, ENV_VAR, HostConfig, LocalConfig, find_config, load_config
from .errors import (
    EXIT_ARRAY,
    EXIT_OK,
    EXIT_USAGE,
    ArrayError,
    HostctlError,
    UsageError,
)
from .render import links_table, luns_table, render_info, render_raw

EPILOG = """\
exit codes:
  0  ok
  1  the array answered with an error (its status name and error text are printed)
  2  usage or configuration error
  3  unreachable: connection refused, login failed, no such device, link to the array down
  4  timeout: the command did not complete within --timeout
  5  protocol error: not a command device, or a block that does not parse

config: --config FILE, else $HOSTCTL_CONFIG, else /etc/storaged/hostctl.yaml (see docs/hostctl.md)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--config", metavar="FILE", default=d, help=f"host config (default: ${ENV_VAR}, else {DEFAULT_PATH})"
    )
    p.add_argument(
        "--json", action="store_true", default=d if suppress else False, help="print the edited data as JSON"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        default=d,
        help="give up on a command after this long (default: the config's timeout, 30)",
    )
    p.add_argument("--array", metavar="NAME", default=d, help="the array to drive (default: the local array)")
    p.add_argument(
        "--device",
        metavar="PATH|URL",
        default=d,
        help="the local command device: iscsi://host[:port]/target/lun, /dev/sdX or a file "
        "(overrides local.command_device)",
    )
    p.add_argument("-v", "--verbose", action="count", default=d if suppress else 0, help="log what happens")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"timeout must be above 0 and at most 86400 seconds, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hostctl",
        description="Drive storaged arrays through their command devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hostctl {__version__}")
    _global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser(
        "info",
        parents=[common],
        help="array name, version, uuid, LUNs, LUN map, command devices, links",
        description="Show what the array reports about itself (ARRAY_INFO).",
    )
    sub.add_parser("luns", parents=[common], help="the array's LUNs", description="List the LUNs (LUN_LIST).")
    sub.add_parser(
        "link",
        parents=[common],
        help="the array's remote links",
        description="Show the remote links to peer arrays (LINK_STATUS).",
    )
    raw = sub.add_parser(
        "raw",
        parents=[common],
        help="run any process number and print the whole response",
        description="Run one command by process name or number and print the full response "
        "(state, tag, status, error text, edited data).",
    )
    raw.add_argument(
        "process", metavar="PROCESS", help=f"process name ({', '.join(p.name for p in Process)}) or number"
    )
    raw.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an input parameter; VALUE is parsed as JSON if it can be (3, true, null, "
        '"3"), else taken as a string; repeatable',
    )
    raw.add_argument("--json-params", metavar="JSON", help="the input parameter as one JSON object")
    raw.add_argument(
        "--no-edited-data",
        action="store_true",
        help="clear the 'edited data' flag: the array returns only a status",
    )
    _pair_commands(sub, common)
    return parser


def _group(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "-g", "--group", required=required, type=pairs.parse_group, metavar="GROUP", help="the journal group"
    )


def _pair_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Remote copy (docs/replication.md), named after HORCM's commands."""
    pc = sub.add_parser(
        "paircreate",
        parents=[common],
        help="create a remote-copy pair group (PAIR_CREATE on the S-VOL's array)",
        description="Create a pair of a P-VOL and an S-VOL on two arrays with their journals "
        "(PAIR_CREATE, sent to the S-VOL's array). --wait follows the initial copy until PAIR.",
    )
    _group(pc)
    pc.add_argument(
        "--pvol", required=True, type=pairs.parse_volume, metavar="ARRAY:LUN", help="primary volume"
    )
    pc.add_argument(
        "--svol", required=True, type=pairs.parse_volume, metavar="ARRAY:LUN", help="secondary volume"
    )
    pc.add_argument(
        "--pjnl",
        required=True,
        type=pairs.parse_lun,
        metavar="LUN",
        help="primary journal LUN (on the P-VOL's array)",
    )
    pc.add_argument(
        "--sjnl",
        required=True,
        type=pairs.parse_lun,
        metavar="LUN",
        help="secondary journal LUN (on the S-VOL's array)",
    )
    pc.add_argument("--ptarget", default="", metavar="IQN",
                    help="the P-VOL array's target holding the P-VOLs and its journal (default: its first)")
    pc.add_argument("--starget", default="", metavar="IQN",
                    help="the S-VOL array's target holding the S-VOLs and its journal (default: its first)")
    pc.add_argument(
        "--wait",
        action="store_true",
        help="poll PAIR_DISPLAY every 0.5s until the group is PAIR (exit 0), PSUE/SMPL (exit 1) or "
        "--timeout passes (exit 4)",
    )
    pc.add_argument("--no-progress", action="store_true", help="with --wait: no progress on stderr")

    pd = sub.add_parser(
        "pairdisplay",
        parents=[common],
        help="pair groups: states, copy %%, journal usage, lag (PAIR_DISPLAY)",
        description="Show the pair groups of an array (PAIR_DISPLAY on --array, default the local one).",
    )
    _group(pd, required=False)

    ps = sub.add_parser(
        "pairsplit",
        parents=[common],
        help="suspend a group: PAIR -> PSUS (PAIR_SPLIT)",
        description="Split a pair group (PAIR_SPLIT on --array, default the local array).",
    )
    _group(ps)
    ps.add_argument("--rw", action="store_true", help="make the S-VOLs writable (HORCM -rw)")

    pr = sub.add_parser(
        "pairresync",
        parents=[common],
        help="resume a split group: PSUS/PSUE -> COPY -> PAIR (PAIR_RESYNC)",
        description="Resynchronize a pair group (PAIR_RESYNC on the S-VOL's array, given with --array).",
    )
    _group(pr)
    pr.add_argument(
        "--force", action="store_true", help="resync even if the S-VOLs were written (their changes are lost)"
    )
    pr.add_argument(
        "--swap",
        action="store_true",
        help="after a takeover (SSWS): make this array the primary and copy back only what differs "
        "(HORCM -swaps); refused while the old primary holds unreplicated writes, unless --force",
    )

    pdel = sub.add_parser(
        "pairdelete",
        parents=[common],
        help="dissolve a group: any -> SMPL (PAIR_DELETE; HORCM pairsplit -S)",
        description="Delete a pair group (PAIR_DELETE on --array, default the local array).",
    )
    _group(pdel)

    prel = sub.add_parser(
        "pairrelease",
        parents=[common],
        help="let a FENCED primary take host writes again (PAIR_RELEASE)",
        description="Release the fence of a primary group (PAIR_RELEASE on --array, default the local "
        "array). A primary comes up FENCED after a restart until its peer confirms it is still the "
        "primary; use this only when the peer cannot answer and you know it has not taken over, or "
        "accept that both sides may then have written.",
    )
    _group(prel)

    rp = sub.add_parser(
        "replicate",
        parents=[common],
        help="run the journal copy loop from the host (Fig. 16)",
        description="Copy a group's journal from the host: JOURNAL_STATUS on the primary, "
        "JOURNAL_ACQUIRE and JOURNAL_STATUS on the secondary, JOURNAL_RESTORE up to read-completed, "
        "JOURNAL_PURGE on the primary. One line per round (JSON lines with --json).",
    )
    _group(rp)
    rp.add_argument("--primary", required=True, metavar="ARRAY", help="the P-VOL's array")
    rp.add_argument("--secondary", required=True, metavar="ARRAY", help="the S-VOL's array")
    mode = rp.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="one round")
    mode.add_argument("--follow", action="store_true", help="rounds until Ctrl-C (exit 0)")
    rp.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="with --follow: seconds between rounds (1)",
    )

    sw = sub.add_parser(
        "pairsyncwait",
        parents=[common],
        help="wait until the S-VOLs hold every write up to a sequence number (PAIR_SYNCWAIT)",
        description="Wait on the S-VOL's array (--array, default the local one) until the group has "
        "restored sequence number --seq (default: the array asks the primary for its newest one). "
        "Prints DONE (exit 0), TIMEOUT (exit 4) or BROKEN (exit 1).",
    )
    _group(sw)
    sw.add_argument("--seq", type=pairs.parse_seq, metavar="N", help="the sequence number to wait for")
    sw.add_argument(
        "--wait-timeout",
        type=_seconds,
        metavar="S",
        help="how long the array waits (default: --timeout); the command may take this plus --timeout",
    )

    tk = sub.add_parser(
        "takeover",
        parents=[common],
        help="take over a group on the S-VOL side (TAKEOVER; HORCM horctakeover)",
        description="Run TAKEOVER on the S-VOL's array (--array, default the local one): swap the "
        "roles if the primary is reachable, else make the S-VOLs writable (SSWS). Prints the "
        "variant chosen and the data at risk.",
    )
    _group(tk)
    tk.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")


def parse_params(pairs: list[str], json_params: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if json_params is not None:
        try:
            loaded = json.loads(json_params)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--json-params is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--json-params must be a JSON object, e.g. '{\"lun\": 3}'")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def resolve_config(
    args: argparse.Namespace, env: dict[str, str] | os._Environ[str] | None = None
) -> HostConfig:
    path, required = find_config(args.config, os.environ if env is None else env)
    assert path is not None
    if not required and not os.path.exists(path):
        if args.device:
            return HostConfig(LocalConfig(None, args.device, {}), source="--device")
        raise UsageError(
            f"no host config: {path} does not exist; pass --config FILE, set ${ENV_VAR}, "
            f"or name the command device with --device"
        )
    return load_config(path)


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


async def run_command(
    args: argparse.Namespace, config: HostConfig, out: TextIO, err: TextIO | None = None
) -> int:
    timeout = args.timeout if args.timeout is not None else config.timeout
    err = err if err is not None else sys.stderr
    bound = pairs.overall_bound(args, timeout) if args.command in pairs.COMMANDS else timeout * 2 + 10
    async with Host(config, device=args.device, timeout=timeout) as host:
        if bound is None:  # replicate --follow: runs until interrupted; each command has its timeout
            return await _dispatch(args, host, timeout, out, err)
        try:
            return await asyncio.wait_for(_dispatch(args, host, timeout, out, err), bound)
        except TimeoutError:
            from .errors import CommandTimeout

            raise CommandTimeout(f"no result within {bound:g}s") from None


async def _dispatch(args: argparse.Namespace, host: Host, timeout: float, out: TextIO, err: TextIO) -> int:
    if args.command in pairs.COMMANDS:
        return await pairs.run(args, host, timeout, out, err)
    client = await host.client(args.array)
    if args.command == "raw":
        process, params = args.process_number, args.params
        resp = await client.run(
            process, params, edited_data=not args.no_edited_data, timeout=timeout, check=False
        )
        d = resp.to_dict()
        if args.json:
            _print_json(d, out)
        else:
            out.write(render_raw(d) + "\n")
        if not resp.ok:
            raise ArrayError(client.where, resp.status, resp.error, process, resp.data)
        return EXIT_OK
    process = {"info": Process.ARRAY_INFO, "luns": Process.LUN_LIST, "link": Process.LINK_STATUS}[
        args.command
    ]
    resp = await client.run(process, {}, timeout=timeout)
    data = resp.data if isinstance(resp.data, dict) else {}
    if args.json:
        _print_json(data, out)
    elif args.command == "info":
        out.write(render_info(data, client_version=__version__) + "\n")
    elif args.command == "luns":
        luns = data.get("luns") or []
        out.write((luns_table(luns) if luns else "(no LUNs)") + "\n")
    else:
        links = data.get("links") or []
        out.write((links_table(links) if links else "(no peer links configured)") + "\n")
    return EXIT_OK


async def main_async(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """The CLI inside a running event loop: returns the exit code, prints errors as one line."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        err.write(f"hostctl: {exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        if args.command == "raw":  # check the command line before touching any device
            args.process_number = parse_process(args.process)
            args.params = parse_params(args.param, args.json_params)
        if args.command in pairs.COMMANDS:
            pairs.check_args(args)
        config = resolve_config(args)
        return await run_command(args, config, out, err)
    except HostctlError as exc:
        err.write(f"hostctl: {exc}\n")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, unless -v
        if args.verbose:
            logging.getLogger("hostctl").exception("internal error")
        err.write(f"hostctl: internal error: {type(exc).__name__}: {exc} (run with -v for details)\n")
        return EXIT_ARRAY


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``hostctl ...``: returns the exit code (never calls sys.exit)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = sum(a.count("v") for a in argv if a.startswith("-v") and set(a[1:]) == {"v"}) + argv.count(
        "--verbose"
    )
    logging.basicConfig(
        stream=stderr or sys.stderr,
        format="hostctl: %(levelname)s: %(message)s",
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
    )
    try:
        return asyncio.run(main_async(argv, stdout=stdout, stderr=stderr))
    except KeyboardInterrupt:
        (stderr or sys.stderr).write("hostctl: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())

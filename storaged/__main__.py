"""Command line: ``storaged [--config FILE] [--listen HOST:PORT] [--data-dir DIR]``, ``--check-config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from .config import ConfigError, check_lun_files_confined, default_config, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="storaged",
        description="A storage array in software: serves sparse-file LUNs over iSCSI. "
        "Without --config it starts an embedded default array on 127.0.0.1:3260.",
    )
    ap.add_argument("--config", metavar="FILE", help="array configuration (YAML)")
    ap.add_argument("--listen", metavar="HOST:PORT", help="iSCSI portal address (port 0 picks a free port)")
    ap.add_argument("--data-dir", metavar="DIR", help="where LUN files and array tables live")
    ap.add_argument("--metrics-listen", metavar="HOST:PORT",
                    help="serve Prometheus metrics on http://HOST:PORT/metrics (overrides metrics.listen)")
    ap.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override the config")
    ap.add_argument("--log-format", choices=["text", "json"], default="text",
                    help="json: one object per line (ts, level, logger, message, initiator, target, lun, "
                    "peer, group, exc) for log shippers")
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    ap.add_argument("--check-config", metavar="FILE",
                    help="check FILE as startup would (nothing is created) and exit: 0 with 'ok', or 2 with the "
                    "problems, each naming the file and the field")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .daemon import VERSION, run

    if args.version:
        print(f"storaged {VERSION}")
        return 0
    overrides = {"listen": args.listen, "data_dir": args.data_dir, "metrics_listen": args.metrics_listen}
    if args.check_config:
        from .configcheck import check_config

        problems = check_config(args.check_config, **overrides)
        for problem in problems:
            print(f"storaged: {problem}", file=sys.stderr)
        if not problems:
            print("ok")
        return 2 if problems else 0
    try:
        cfg = load_config(args.config) if args.config else default_config()
        cfg = cfg.with_overrides(**overrides)
        check_lun_files_confined(cfg)
    except ConfigError as exc:
        print(f"storaged: configuration error: {exc}", file=sys.stderr)
        return 2
    from .logfmt import setup as setup_logging

    setup_logging(args.log_format, args.log_level or cfg.log_level, sys.stderr)
    try:
        import uvloop  # optional: a faster event loop when installed

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        config_path = args.config
        # SIGHUP re-reads the same file with the same command-line overrides
        reread = (lambda: load_config(config_path).with_overrides(**overrides)) if config_path else None
        return runner(run(cfg, reread))
    except OSError as exc:
        logging.getLogger("storaged").error("cannot start: %s", exc)
        return 1
    except Exception as exc:  # startup errors reach the user as one line
        from .backstore.base import BackstoreError

        if isinstance(exc, BackstoreError):
            logging.getLogger("storaged").error("cannot start: %s", exc)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

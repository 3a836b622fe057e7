"""The ``frontdesk`` command line: ``serve``, ``check-config``, ``bench-sip``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import sys

from .config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .ivrsetup import load_prompts
    from .media.prompts import PromptError

    try:
        prompts = load_prompts(config)  # renders new text prompts once; later starts read the cache
    except PromptError as exc:
        where = args.config or "the built-in demo"
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    # Thousands of live calls and transactions are long-lived objects: move
    # start-up objects out of the collector's view and collect young objects
    # less often, or full collections eat the per-message budget.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    print(
        f"frontdesk: SIP on {config.sip.listen}:{config.sip.port} ({'/'.join(config.sip.transports)}), "
        f"HTTP on http://{config.http.listen}:{config.http.port}",
        flush=True,
    )
    web.run_app(create_app(config, prompts), host=config.http.listen, port=config.http.port, print=None)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.config}: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="frontdesk", description="Call-center backend: SIP router, IVR, queues, callbacks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--config", "-c", help="YAML config file (default: embedded defaults)")
    p.set_defaults(func=_serve)
    p = sub.add_parser("check-config", help="validate a config file without starting")
    p.add_argument("config")
    p.set_defaults(func=_check_config)
    # planning and load tools live in sim/ and are loaded only when asked for
    p = sub.add_parser("bench-sip", help="benchmark SIP answering against SIPp's own UAS", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: importlib.import_module("sim.sipbench").main(a.rest))
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench-sip"]:
        # its own options go straight through (argparse REMAINDER drops leading ones)
        return int(importlib.import_module("sim.sipbench").main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

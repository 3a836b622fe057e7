"""The ``frontdesk`` command line: ``serve``, ``check-config``, ``complaints``, ``hash-password``, benchmarks.

Subcommands stop with :class:`CliError` (a message for stderr and the exit status); the config is read, the
prompts rendered and a report's database found by one helper each, so every subcommand words a bad file alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ivr.settings.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from ivr.media.prompts import PromptStore

GC_THRESHOLDS = (5_000, 10, 100)  # the collector's, while serving (tune_runtime)
GIL_SWITCH_INTERVAL = 0.0005  # seconds a thread holds the interpreter lock while another waits (default 0.005)


class CliError(Exception):
    """A subcommand cannot go on: ``message`` goes to stderr and ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _config(args: argparse.Namespace) -> Config:
    """The config file named by ``args.config`` (the embedded defaults without one); CliError names file and line."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _prompts(args: argparse.Namespace, config: Config) -> PromptStore:
    """Every prompt rendered into the cache (new text prompts once; later starts read the cache)."""
    from ivr.media.prompts import PromptError
    from ivr.settings.prompts import load_prompts

    try:
        return load_prompts(config)
    except PromptError as exc:
        raise CliError(f"{args.config or 'the built-in demo'}: {exc}") from None


def _database_url(config: Config, what: str) -> str:
    """``storage.url``, once sure that a report will not create an empty SQLite database where the server keeps none."""
    url = config.storage.url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
        if path and path != ":memory:" and not Path(path).exists():
            raise CliError(f"no {what}: {path} does not exist (storage.url {url})", 1)
    return url


def tune_runtime() -> None:
    """The interpreter's settings for serving: the garbage collector's and the interpreter lock's."""
    # Start-up objects move out of the collector's view. A young collection's pause grows with its
    # threshold (about 0.5 ms per 1,000 objects here): at 50,000 one took 25-40 ms, a SIP p99 of
    # 40-60 ms at 1,300 calls/s; at 5,000 (and every 10th promoted) the pauses stay under 5 ms and 12 ms.
    # Small collections are cheap now that an ended call leaves only its two transactions behind.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # The database drivers (aiosqlite) run Python on threads of their own: while one holds the interpreter
    # lock, the event loop gets it back only after the switch interval (5 ms by default), and every SIP
    # datagram and media part waits that long. At 0.5 ms a stall behind a driver's thread stays under 1 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def _serve(args: argparse.Namespace) -> int:
    from callback import logmask as log_privacy
    from ivr.transport.tcp import raise_file_limit
    from ivr.web.app import create_app
    from ivr.web.lifecycle import serve
    from queueing import native_status

    config = _config(args)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ivr.cli").info("queue engine: %s", native_status())  # compiled build or pure Python, and why
    log_privacy.install(config.security.log_numbers)  # customers' numbers and texts masked unless set clear
    # every TCP connection and every call's RTP socket is a descriptor: take all the system allows
    raise_file_limit(config.security.tcp.max_connections)
    prompts = _prompts(args, config)
    tune_runtime()
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
    # until SIGTERM (drain, then stop: ivr/web/lifecycle.py) or SIGINT (stop at once)
    return asyncio.run(serve(create_app(config, prompts), config))


def _check_config(args: argparse.Namespace) -> int:
    store = _prompts(args, _config(args))  # renders into the prompt cache: the server will not need to
    print(f"{args.config}: OK ({len(store.ids())} prompts ready)")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    """Print an agent's config line: the HA1 of name:realm:password, never the password."""
    import getpass

    from ivr.sip.registrar import USERNAME_RE, ha1

    name = args.username
    if not USERNAME_RE.match(name):
        print(f"{name!r} is not a valid agent name: up to 64 letters, digits, '.', '_', '~', '+', '-'", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("empty password", file=sys.stderr)
        return 2
    print(f"# under agents: in the config (realm {args.realm!r}, = sip.realm)", file=sys.stderr)
    print(f"  '{name}': {{ha1: {ha1(name, args.realm, password)}}}")
    return 0


def _month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` as (year, month), for argparse."""
    year, sep, month = text.partition("-")
    if not (sep and len(year) == 4 and len(month) == 2 and year.isdigit() and month.isdigit()):
        raise argparse.ArgumentTypeError(f"month must be YYYY-MM (e.g. 2024-05), not {text!r}")
    if not 1 <= int(month) <= 12 or int(year) < 1900:
        raise argparse.ArgumentTypeError(f"no such month: {text!r}")
    return int(year), int(month)


def _complaints(args: argparse.Namespace) -> int:
    """Complaints by category for one month (R4), UTC months like GET /admin/complaints."""
    import json
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from callback.base import create_engine
    from ivr.storage.records import complaint_counts

    url = _database_url(_config(args), "call records")
    now = datetime.now(UTC)
    year, month = args.month or (now.year, now.month)

    async def count() -> dict[str, int]:
        engine = create_engine(url)
        try:
            return await complaint_counts(engine, year, month)
        finally:
            await engine.dispose()

    try:
        counts = asyncio.run(count())
    except SQLAlchemyError as exc:
        print(f"cannot read call records from {url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    label = f"{year:04d}-{month:02d}"
    total = sum(counts.values())
    if args.json:
        print(json.dumps({"month": label, "counts": counts, "total": total}))
        return 0
    print(f"complaints in {label} (UTC)")
    width = max([len("total"), *map(len, counts)])
    for category, n in counts.items():
        print(f"  {category:<{width}}  {n:>6}")
    print(f"  {'total':<{width}}  {total:>6}")
    return 0


def _handover(args: argparse.Namespace) -> int:
    """R19: every open callback and promise, with who holds it, read from the database (GET /callbacks/handover)."""
    import json
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from callback.base import create_engine
    from callback.handover import handover_json, handover_text
    from ivr.web.app import callback_store

    config = _config(args)
    url = _database_url(config, "callbacks")
    now = datetime.now(UTC)

    async def report() -> dict[str, object]:
        engine = create_engine(url)
        try:
            store = callback_store(engine, config.callbacks)
            return handover_json(await store.handover(now), await store.counts_by_state(), now)
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(report())
    except SQLAlchemyError as exc:
        print(f"cannot read callbacks from {url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else handover_text(result))
    return 0


def _erlang(args: argparse.Namespace) -> int:
    """Erlang B, C or A for one staffing: the figures planners read (sim/erlang.py, docs/sim.md)."""
    from sim.erlang import run_cli

    status, text = run_cli(
        args.model, args.arrival_rate, args.aht, args.agents, args.patience, args.target_wait, args.json
    )
    print(text, file=sys.stderr if status else sys.stdout)
    return status


def _sim(args: argparse.Namespace) -> int:
    """Run a traffic scenario on the queueing engine (sim/): summary, report folder, staffing, what-ifs."""
    from sim.cli import run_cli

    return run_cli(args)


BENCHMARKS = {
    "bench-sip": "benchmark SIP answering against SIPp's own UAS and Kamailio (sim/live/sipbench.py)",
    "bench-cluster": "one node against one and two cluster nodes behind Kamailio; queue decision latency "
    "(sim/live/clusterbench.py)",
    "bench-flood": "legitimate calls through a SIP INVITE flood from another address (sim/live/floodbench.py)",
    "bench-media": "benchmark RTP pacing with many concurrent IVR calls (sim/live/mediabench.py)",
    "bench-hold": "new calls answered while thousands of callers hold in line (sim/live/holdbench.py)",
    "bench-bookings": "benchmark durable callback bookings per second, SQLite and PostgreSQL (callback/bench.py)",
    "bench-sim": "benchmark the traffic simulator in simulated calls per second, against Ciw (sim/simbench.py)",
    "bench-fuzz": "feed 10^6 mutated SIP datagrams through the user agent: no escape, no state left (ivr/fuzz/run.py)",
    "load": "play a scenario to a running server over SIP and compare with the simulator (sim/live/load.py)",
    "cluster": "run a local cluster on 127.0.0.1: PostgreSQL, Redis, Kamailio and N nodes (sim/live/cluster.py)",
}
BENCHMARK_MODULES = {
    "bench-sip": "sim.live.sipbench",
    "bench-cluster": "sim.live.clusterbench",
    "bench-flood": "sim.live.floodbench",
    "bench-media": "sim.live.mediabench",
    "bench-hold": "sim.live.holdbench",
    "bench-bookings": "callback.bench",
    "bench-sim": "sim.simbench",
    "bench-fuzz": "ivr.fuzz.run",
    "load": "sim.live.load",
    "cluster": "sim.live.cluster",
}


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
    p = sub.add_parser("hash-password", help="print an agent's SIP login for the config (password from stdin)")
    p.add_argument("username")
    p.add_argument("--realm", default="frontdesk", help="the config's sip.realm (default: frontdesk)")
    p.set_defaults(func=_hash_password)
    p = sub.add_parser("complaints", help="complaints by category for a month (R4)")
    p.add_argument("--config", "-c", help="YAML config file (default: embedded defaults)")
    p.add_argument("--month", type=_month, help="YYYY-MM, UTC (default: this month)")
    p.add_argument("--json", action="store_true", help="print JSON like GET /admin/complaints")
    p.set_defaults(func=_complaints)
    p = sub.add_parser("handover", help="shift handover: every open callback and promise, who holds what (R19)")
    p.add_argument("--config", "-c", help="YAML config file (default: embedded defaults)")
    p.add_argument("--json", action="store_true", help="print JSON like GET /callbacks/handover")
    p.set_defaults(func=_handover)
    p = sub.add_parser("erlang", help="Erlang B, C or A: waiting, service level, abandonment for N agents")
    p.add_argument("model", choices=["b", "c", "a"], help="b: lost calls, c: patient callers, a: callers who give up")
    p.add_argument("--arrival-rate", type=float, required=True, metavar="CALLS_PER_S", help="calls per second")
    p.add_argument("--aht", type=float, required=True, metavar="SECONDS", help="average handle time (talk + wrap-up)")
    p.add_argument("--agents", type=int, required=True, metavar="N")
    p.add_argument("--patience", type=float, metavar="SECONDS", help="callers' mean patience (Erlang A)")
    p.add_argument("--target-wait", type=float, default=20.0, metavar="SECONDS", help="service level T (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_erlang)
    p = sub.add_parser("sim", help="simulate a traffic scenario on the queue policy engine (docs/sim.md)")
    from sim.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=_sim)
    # planning and load tools live in sim/ and are loaded only when asked for;
    # their own options go straight through to them
    for name, help_text in BENCHMARKS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in BENCHMARKS:
        module = importlib.import_module(BENCHMARK_MODULES[argv[0]])
        return int(module.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(exc, file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())

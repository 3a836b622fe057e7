"""``frontdesk sim``: its options and its entry point (kept light: the simulator loads when it runs)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file (docs/sim.md; examples in sim/scenarios/)")
    p.add_argument("--replications", "-n", type=int, help="independent runs (default: the scenario's)")
    p.add_argument("--seed", type=int, help="seed of the first run (default: the scenario's)")
    p.add_argument("--out", "-o", help="report folder: per-block CSV and JSON, PNG plots")
    p.add_argument("--what-if", action="store_true", help="compare surge switch, peak shaving, callback offer off/on")
    p.add_argument("--staffing", action="store_true", help="fewest agents per block by Erlang, confirmed by simulation")
    p.add_argument("--max-abandon", type=float, default=0.05, help="abandonment cap for --staffing (default 0.05)")
    p.add_argument("--sizing", action="store_true", help="cluster nodes for the busiest block (also with --staffing)")
    p.add_argument("--headroom", type=float, help="sizing: share of each node kept free (default 0.3)")
    p.add_argument("--spare-nodes", type=int, help="sizing: nodes beyond the need, for a node's loss (default 1)")
    p.add_argument("--sip-calls-per-node", type=float, help="sizing: SIP calls/s a node begins (default 1177)")
    p.add_argument("--media-streams-per-node", type=float, help="sizing: RTP streams a node paces (default 1000)")
    p.add_argument(
        "--engine-events-per-replica",
        type=float,
        help="sizing: queue events/s one replica applies (default 149843)",
    )
    p.add_argument("--kamailio-calls-per-worker", type=float, help="sizing: calls/s per Kamailio worker (default 2055)")
    p.add_argument("--events-per-call", type=float, help="sizing: engine events per call (default: the simulation's)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="replications run in parallel processes (default 1)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV and JSON files only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the day's totals as JSON instead of the table")


def run_cli(args: argparse.Namespace) -> int:
    from sim.report import main

    return main(args)

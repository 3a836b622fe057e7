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
    p.add_argument("--jobs", "-j", type=int, default=1, help="replications run in parallel processes (default 1)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV and JSON files only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the day's totals as JSON instead of the table")


def run_cli(args: argparse.Namespace) -> int:
    from sim.report import main

    return main(args)

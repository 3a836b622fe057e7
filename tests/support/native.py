"""Runs for the compiled-or-pure tests (tests/test_native.py), in this process or as ``python -m tests.support.native``.

The command prints one JSON object: which build is active, a digest of every
(event, decisions) and block row of seeded simulations of the example
scenarios, and the pickle check of an engine taken mid-run, so a process
with ``FRONTDESK_PURE=1`` and one without can be compared.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import queueing
import queueing.engine
from queueing.engine import Engine
from queueing.events import Decision, Event
from sim.scenario import load_scenario
from sim.simulation import Simulation

SCENARIOS = Path(__file__).resolve().parent.parent.parent / "sim" / "scenarios"
RUNS = (("weekday.yaml", 7), ("fault_surge.yaml", 3), ("single_queue.yaml", 11))


def engine_is_compiled() -> bool:
    return not str(queueing.engine.__file__).endswith(".py")


def run_digest(scenario: str, seed: int) -> dict[str, Any]:
    """A seeded run of ``scenario``: its size and a digest of everything the engine and the report saw."""
    trace: list[tuple[Event, list[Decision]]] = []
    result = Simulation(load_scenario(SCENARIOS / scenario), seed, trace=trace).run()
    h = hashlib.sha256()
    for event, decisions in trace:
        h.update(repr(event).encode())
        h.update(repr(decisions).encode())
    h.update(repr(result.blocks).encode())
    h.update(repr(result.samples).encode())
    h.update(repr(result.surge_changes).encode())
    return {"calls": result.calls, "events": result.events, "sha256": h.hexdigest()}


def pickle_check(scenario: str, seed: int, at: float = 0.5) -> dict[str, Any]:
    """An engine pickled after ``at`` of a run's events, then both fed the rest: do the two decide the same?"""
    trace: list[tuple[Event, list[Decision]]] = []
    Simulation(load_scenario(SCENARIOS / scenario), seed, trace=trace).run()
    split = int(len(trace) * at)
    original = Engine(load_scenario(SCENARIOS / scenario).model)
    for event, _ in trace[:split]:
        original.handle(event)
    in_books = len(original.calls)  # callers waiting, ringing or talking when the copy is taken
    timers = original.next_timer()
    copy = pickle.loads(pickle.dumps(original))
    timer_kept = copy.next_timer() == timers and copy.now == original.now
    differ = 0
    decisions = 0
    for event, recorded in trace[split:]:
        mine, theirs = original.handle(event), copy.handle(event)
        decisions += len(mine)
        differ += mine != theirs or mine != recorded
    return {
        "type": f"{type(copy).__module__}.{type(copy).__qualname__}",
        "calls_at_split": in_books,
        "next_timer_kept": timer_kept,
        "events_after": len(trace) - split,
        "decisions_after": decisions,
        "events_decided_differently": differ,
        "same_snapshot": repr(original.snapshot()) == repr(copy.snapshot()),
        "same_stats": repr(original.stats) == repr(copy.stats),
    }


def report() -> dict[str, Any]:
    return {
        "status": queueing.native_status(),
        "engine_compiled": engine_is_compiled(),
        "runs": {f"{name}:{seed}": run_digest(name, seed) for name, seed in RUNS},
        "pickle": pickle_check("fault_surge.yaml", 3),
    }


if __name__ == "__main__":
    json.dump(report(), sys.stdout)

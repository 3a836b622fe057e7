"""The callers of a load run, what a scenario lets a run play, and the two sides compared on those callers.

``frontdesk load`` (sim/live/load.py) draws the callers here, asks the
simulator what it predicts for exactly them (and for the scenario's
replications over the same window), and reads the server's counters before
and after; none of this touches the network except ``scrape``, one GET of
``/metrics``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sim.live.promtext import parse_metrics, sample
from sim.plan import Diversion, LoadPlan, Plan, RateStep, Sampler, ScriptedCall
from sim.simulation import Simulation, derive
from sim.stats import Estimate, replicate, run_totals

# the KPIs, from the server's counters (summed over the queues)
SERVER_COUNTERS = {
    "offered": "frontdesk_queue_calls_offered_total",
    "answered": "frontdesk_queue_calls_answered_total",
    "answered_within_t": "frontdesk_queue_answered_within_threshold_total",
    "abandoned": "frontdesk_queue_calls_abandoned_total",
    "abandoned_short": "frontdesk_queue_abandoned_short_total",
    "overflowed": "frontdesk_queue_calls_overflowed_total",
    "ring_no_answer": "frontdesk_queue_ring_no_answer_total",
    "answer_wait_total": "frontdesk_queue_answer_wait_seconds_sum",
}
COMPARED = ("calls", "diverted", "offered", "answered", "abandoned", "overflowed", "service_level", "asa_s",
            "abandon_rate")  # fmt: skip


class LoadError(Exception):
    """Why a load run cannot start (or could not finish), worded for its operator."""


@dataclass(frozen=True, slots=True)
class LoadCall:
    """One caller of the run."""

    number: str
    at: float  # seconds after the start: joins the queue (or presses the diversion key)
    queue: str
    key: str | None  # pressed ``key_delay`` after the answer; None: the number leads straight to the queue
    handle: float  # talk time once an agent answers
    patience: float  # seconds on hold before hanging up; inf: never
    diverted: str | None = None  # "hotkey" | "self_service": takes that key and leaves

    def dial_at(self, key_delay: float) -> float:
        return self.at - (key_delay if self.key is not None else 0.0)


# ----------------------------------------------------------------- what can be played


def replay_problems(plan: Plan) -> list[str]:
    """What in the scenario a load run cannot play (an empty list: it can)."""
    ld = plan.load
    if ld is None:
        return ["the scenario has no `load` section (what callers dial, which agents play the teams)"]
    out = []
    if plan.group_shares or any(s.group is not None for s in plan.sources):
        out.append("caller groups (callers.groups, fault surges): the load callers are in no group")
    if any(s.notice_resolves for s in plan.sources):
        out.append("surges.notice_resolves: the load callers do not hang up after a notice")
    if plan.redial.probability > 0:
        out.append("callers.redial: the load callers do not call again")
    if plan.callbacks is not None and plan.callbacks.take_up > 0:
        out.append("callbacks.take_up above 0: the load callers book no callback (set it to 0)")
    div = plan.diversion
    if div.hotkey or div.self_service:
        if div.when != "always":
            out.append("callers.diversion.when: surge: the load callers do not know the surge state")
        if div.hotkey and ld.hotkey_key is None:
            out.append("callers.diversion.hotkey needs load.hotkey_key")
        if div.self_service and ld.self_service_key is None:
            out.append("callers.diversion.self_service needs load.self_service_key")
    if plan.reserves:
        out.append("agents.reserves: reserve echelons are not called in by a load run")
    if plan.surge_commands:
        out.append("surge_switch events and surge schedule windows: a load run does not switch surge")
    return out


def loopback_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` of a loopback address, or LoadError."""
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadError(f"--target {target!r}: give HOST:PORT")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
        host = "127.0.0.1" if loopback else host
    if not loopback:
        raise LoadError(f"--target {target!r}: a load run sends traffic to loopback addresses only")
    return host, int(port)


# ----------------------------------------------------------------- the calls


def window(plan: Plan, duration: float) -> Plan:
    """The plan with arrivals only in [0, ``duration``) and every block counted (nothing is warm-up)."""
    sources = tuple(
        dataclasses.replace(
            s, steps=tuple(RateStep(r.start, min(r.end, duration), r.rate) for r in s.steps if r.start < duration)
        )
        for s in plan.sources
    )
    return plan.with_changes(sources=sources, warmup_blocks=0)


def draw_calls(plan: Plan, seed: int, duration: float) -> list[LoadCall]:
    """The callers of one run: the scenario's arrivals in [0, ``duration``), their choices and times."""
    ld = plan.load or LoadPlan()
    root = random.Random(seed)
    r_arrive, r_caller, r_choice = (random.Random(root.getrandbits(64)) for _ in range(3))
    arrivals: list[tuple[float, str | None]] = []
    for source in plan.sources:
        for step in source.steps:
            end = min(step.end, duration)
            t = step.start
            while step.rate > 0:
                t += r_arrive.expovariate(step.rate)
                if t >= end:
                    break
                arrivals.append((t, source.queue))
    arrivals.sort(key=lambda a: a[0])
    handle: dict[str, Sampler] = {q: d.sampler() for q, d in plan.handle_time.items()}
    patience = plan.patience.sampler()
    queues = [q for q, _ in plan.queue_mix]
    weights = [share for _, share in plan.queue_mix]
    div = plan.diversion
    calls = []
    for i, (t, fixed) in enumerate(arrivals):
        queue = fixed or (queues[0] if len(queues) == 1 else r_caller.choices(queues, weights)[0])
        u = r_choice.random()
        diverted = "hotkey" if u < div.hotkey else "self_service" if u < div.hotkey + div.self_service else None
        talk, wait = handle[queue](r_caller), patience(r_caller)
        if diverted is not None:
            key = ld.hotkey_key if diverted == "hotkey" else ld.self_service_key
        else:
            key = ld.keys.get(queue)
        calls.append(LoadCall(str(ld.first_number + i), t, queue, key, talk, wait, diverted))
    return calls


# ----------------------------------------------------------------- predictions


def predict_same_calls(plan: Plan, calls: list[LoadCall], duration: float, seed: int) -> dict[str, float]:
    """The simulator on exactly these callers: the prediction for this run."""
    sim_plan = window(plan, duration).with_changes(diversion=Diversion(), callbacks=None)
    script = [ScriptedCall(c.at, c.queue, c.handle, c.patience) for c in calls if c.diverted is None]
    totals = run_totals(Simulation(sim_plan, seed, script=script).run(), sim_plan)
    totals["calls"] = float(len(calls))
    totals["diverted"] = float(sum(1 for c in calls if c.diverted is not None))
    return totals


def predict_scenario(
    plan: Plan, duration: float, replications: int, progress: Callable[[int, int], None] | None = None
) -> dict[str, Estimate]:
    """The scenario's replications over the same window: the prediction for any run of it."""
    sim_plan = window(plan, duration)
    if sim_plan.callbacks is not None:
        sim_plan = sim_plan.with_changes(callbacks=None)
    summary = replicate(sim_plan, replications, progress=progress)
    return summary.totals


# ----------------------------------------------------------------- the server's counters


def scrape(url: str) -> dict[str, float]:
    """The KPI counters of ``url`` summed over the queues, and each queue's service-level threshold."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            samples = parse_metrics(r.read().decode())
    except OSError as exc:
        raise LoadError(f"cannot read the server's metrics at {url}: {exc}") from None
    out = {key: sample(samples, name) for key, name in SERVER_COUNTERS.items()}
    for (name, labels), value in samples.items():
        if name == "frontdesk_queue_service_level_threshold_seconds":
            out[f"threshold.{dict(labels).get('queue', '')}"] = value
    return out


def measured(before: Mapping[str, float], after: Mapping[str, float], calls: list[LoadCall]) -> dict[str, float]:
    row = {k: after[k] - before.get(k, 0.0) for k in SERVER_COUNTERS}
    derive(row)
    row["calls"] = float(len(calls))
    row["diverted"] = float(sum(1 for c in calls if c.diverted is not None))
    return row

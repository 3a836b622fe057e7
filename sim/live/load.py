"""``frontdesk load SCENARIO --target HOST:PORT``: play a scenario to a running server, beside the simulator.

Theory of operation
-------------------
1. **The calls** are drawn from the scenario with its seed (:func:`draw_calls`):
   the arrival instants of its piecewise-Poisson sources, each caller's queue
   (or diversion key), talk time and patience. ``--duration`` keeps the first
   seconds of the day; ``--max-calls`` refuses a run bigger than that.
2. **The callers** are SIPp (``sim/scenarios/load_caller.xml``). Every call
   starts at once and waits for its own wall-clock instant (a CSV line per
   call), so the arrival curve is replayed call by call. A caller presses its
   key ``key_delay`` after the answer and so joins the queue at the drawn
   instant. Its INVITE allows UPDATE: the server says by UPDATE (connected
   line) when an agent answered, and then the caller holds on until the agent
   hangs up; if its patience runs out first it hangs up (an abandon). Callers
   stream mu-law audio all along, as a phone does.
3. **The agents** are pyVoIP phones (an independent SIP stack, ``sim.live.phones``),
   registered under the server's agent names given in the scenario's
   ``load.agents`` with ``--password``; a registration logs the agent in, so
   the roster of each block registers and unregisters phones (an agent whose
   shift ends during a call finishes it first). A phone answers after the
   scenario's ring delay (pyVoIP itself answers no sooner than about 1 s
   after the INVITE) and hangs up after the talk time drawn for that caller,
   whom it knows by the number in the INVITE's From.
4. **Measured**: the server's own counters (``/metrics``) before and after
   the run; the service level, ASA and abandonment follow from them with the
   engine's definitions (docs/queueing.md), as the simulator's do.
5. **Predicted**: the simulator runs the very same calls (a script: no draws,
   the prediction for this run) and the scenario's replications for the same
   window (the prediction for any run of it, with 95 % intervals). The three
   columns are printed side by side; ``--tolerance`` makes the exit status
   say whether the live service level and abandonment are within that many
   points of the same-calls prediction.

What a load run cannot play is refused before any call is made: caller groups,
redials, callback bookings, surge-only diversion, targeted notices, reserve
echelons and surge switch events (the callers and agents here do not act on
the server's state). Traffic goes to loopback addresses only.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sim.engine import Simulation, derive
from sim.live.phones import (
    above_ephemeral_ports,
    ack_with_the_dialogs_to_tag,
    free_udp_port,
    free_udp_ports,
    halt_threads,
    import_pyvoip,
    stop_phone,
)
from sim.live.promtext import parse_metrics, sample
from sim.plan import Diversion, LoadPlan, Plan, RateStep, Sampler, ScriptedCall
from sim.stats import Estimate, replicate, run_totals

CALLER_SCENARIO = "load_caller.xml"
CALLER_AUDIO = "caller_audio.ulaw"
LAUNCH_RATE = 500  # calls SIPp starts per second; each then waits for its own instant
# SIPp gives call n the RTP port base + (4 (n - 1)) mod 10000: 9990..19989, below the server's default RTP
# range (20000-30000), the kernel's ephemeral ports and the agents' phones
CALLER_MEDIA_PORTS = 9990
NEVER_MS = 10**11  # the patience of a caller who never hangs up: three years
PYVOIP_ANSWER_DELAY = 1.0  # pyVoIP hands a ring to its phone's code 1 s after the INVITE

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


# ----------------------------------------------------------------- the agents


@dataclass
class AgentPhone:
    name: str
    team: str
    phone: Any = None
    busy: bool = False
    leaving: bool = False


@dataclass
class AgentStats:
    """What the agents' phones did (a ring the server cancelled is still answered: pyVoIP ignores CANCEL)."""

    rings: int = 0
    answered: int = 0
    talked: int = 0  # the agent hung up after the talk time
    ended_by_server: int = 0  # the server hung up first: the caller had left, or a late answer was dropped
    left_ringing: int = 0  # answer_probability: rings left to the ring timeout
    unknown_callers: int = 0  # an INVITE from a number not in the run: talk time = the scenario's mean
    errors: list[str] = field(default_factory=list)


class Agents:
    """The agents' pyVoIP phones: registered per the roster, answering and hanging up as the scenario says."""

    def __init__(
        self,
        plan: Plan,
        calls: list[LoadCall],
        host: str,
        port: int,
        password: Callable[[str], str],
        seed: int,
    ) -> None:
        self.voip = import_pyvoip()
        ld = plan.load
        assert ld is not None
        self.plan = plan
        self.host, self.port = host, port
        self.password = password
        self.talk = {c.number: c.handle for c in calls}
        self.ring_delay = plan.ring_delay.sampler()
        self.answer_probability = plan.answer_probability
        self.rng = random.Random(seed ^ 0x5A5A)
        self.lock = threading.Lock()
        self.stats = AgentStats()
        self.invited: dict[str, float] = {}  # Call-ID -> when the INVITE came
        self.rtp_ports = above_ephemeral_ports()  # clear of SIPp's media ports and of sockets bound to port 0
        self.phones = {
            name: AgentPhone(name, team.name)
            for team in plan.teams
            for name in ld.agents[team.name][: max(team.on_phones)]
        }
        self.on: dict[str, list[str]] = {team.name: [] for team in plan.teams}

    # -- the roster

    def staff(self, block: int) -> None:
        """Bring every team to its block's number of phones registered (leavers finish their call first)."""
        ld = self.plan.load
        assert ld is not None
        for team in self.plan.teams:
            wanted = team.on_phones[block]
            on = self.on[team.name]
            names = [n for n in ld.agents[team.name] if n in self.phones]
            for name in names:
                if len(on) >= wanted:
                    break
                agent = self.phones[name]
                if name in on:
                    continue
                agent.leaving = False
                if agent.phone is None:
                    self._register(agent)
                on.append(name)
            while len(on) > wanted:
                agent = self.phones[on.pop()]
                with self.lock:
                    agent.leaving = True
                    busy = agent.busy
                if not busy:
                    self._unregister(agent)

    def _register(self, agent: AgentPhone) -> None:
        low = free_udp_ports(20, start=self.rtp_ports[0], stop=self.rtp_ports[1])
        phone = self.voip.VoIPPhone(
            self.host,
            self.port,
            agent.name,
            self.password(agent.name),
            myIP="127.0.0.1",
            sipPort=free_udp_port(),
            rtpPortLow=low,
            rtpPortHigh=low + 19,
            callCallback=lambda call, a=agent: self._on_call(a, call),
        )
        phone.sip.register_timeout = 5
        ack_with_the_dialogs_to_tag(phone)
        original = phone.sip.callCallback

        def note_invite(message: Any) -> None:
            if getattr(message, "method", None) == "INVITE":
                with self.lock:
                    self.invited.setdefault(message.headers["Call-ID"], time.monotonic())
            original(message)

        phone.sip.callCallback = note_invite
        agent.phone = phone
        try:
            phone.start()
        except Exception as exc:
            stop_phone(phone)
            agent.phone = None
            raise LoadError(f"agent {agent.name}'s phone did not register with {self.host}:{self.port}: {exc}") from exc
        if phone.get_status() != self.voip.PhoneStatus.REGISTERED:
            stop_phone(phone)
            agent.phone = None
            raise LoadError(f"agent {agent.name}'s phone was refused (check --password and the server's agents)")

    def _unregister(self, agent: AgentPhone) -> None:
        phone, agent.phone = agent.phone, None
        if phone is not None:
            stop_phone(phone)

    def close(self, wait: float = 15.0) -> None:
        """Unregister every phone, all at once; a phone stuck with its server is halted after ``wait`` s."""
        stopping = []
        for agent in self.phones.values():
            phone, agent.phone = agent.phone, None
            if phone is not None:
                thread = threading.Thread(target=stop_phone, args=(phone,), name=f"stop-{agent.name}", daemon=True)
                thread.start()
                stopping.append((thread, phone))
        deadline = time.monotonic() + wait
        for thread, phone in stopping:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                halt_threads(phone)

    # -- a ring (in a pyVoIP thread)

    def _on_call(self, agent: AgentPhone, call: Any) -> None:
        voip = self.voip
        with self.lock:
            self.stats.rings += 1
            invited = self.invited.pop(call.call_id, time.monotonic() - PYVOIP_ANSWER_DELAY)
            delay = self.ring_delay(self.rng)
            answers = self.answer_probability >= 1.0 or self.rng.random() < self.answer_probability
        if not answers:
            with self.lock:
                self.stats.left_ringing += 1
            return  # it rings until the server's ring timeout
        time.sleep(max(0.0, invited + delay - time.monotonic()))
        number = call.request.headers["From"]["number"]
        talk = self.talk.get(number)
        try:
            with self.lock:
                agent.busy = True
            try:
                call.answer()
            except voip.InvalidStateError:
                with self.lock:
                    self.stats.ended_by_server += 1
                return
            answered = time.monotonic()
            with self.lock:
                self.stats.answered += 1
                if talk is None:
                    self.stats.unknown_callers += 1
            end = answered + (talk if talk is not None else self.plan.mean_handle())
            while call.state == voip.CallState.ANSWERED and time.monotonic() < end:
                time.sleep(0.01)
            if call.state == voip.CallState.ANSWERED:
                call.hangup()
                with self.lock:
                    self.stats.talked += 1
            else:
                with self.lock:
                    self.stats.ended_by_server += 1
        except Exception as exc:  # noqa: BLE001 (a pyVoIP thread must not die silently: the run reports it)
            with self.lock:
                self.stats.errors.append(f"{agent.name}: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                agent.busy = False
                leave = agent.leaving
            if leave:
                self._unregister(agent)


# ----------------------------------------------------------------- the callers


def write_callers(calls: list[LoadCall], ld: LoadPlan, t0: float, workdir: Path) -> Path:
    """SIPp's CSV: number; wall-clock ms of the INVITE; key or -; patience ms; key delay ms."""
    path = workdir / "calls.csv"
    lines = ["SEQUENTIAL"]
    for c in calls:
        invite_ms = (t0 + c.dial_at(ld.key_delay)) * 1000
        if c.diverted is not None:
            patience = ld.leave_after * 1000
        else:
            patience = NEVER_MS if math.isinf(c.patience) else c.patience * 1000
        lines.append(f"{c.number};{invite_ms:.0f};{c.key or '-'};{patience:.0f};{ld.key_delay * 1000:.0f}")
    path.write_text("\n".join(lines) + "\n")
    (workdir / CALLER_AUDIO).write_bytes(b"\xff" * 8000)  # a second of mu-law silence, looped
    return path


def sipp_command(sipp: str, host: str, port: int, ld: LoadPlan, n: int, timeout: float, workdir: Path) -> list[str]:
    """SIPp with the caller scenario, its statistics, last screen and errors kept in ``workdir``."""
    scenario = resources.files("sim") / "scenarios" / CALLER_SCENARIO
    return [
        sipp, f"{host}:{port}",
        "-sf", str(scenario),
        "-inf", str(workdir / "calls.csv"),
        "-s", ld.number,
        "-t", "u1",
        "-i", "127.0.0.1",
        "-p", str(free_udp_port()),
        "-mp", str(CALLER_MEDIA_PORTS),
        "-m", str(n),
        "-l", str(n),
        "-r", str(LAUNCH_RATE),
        "-timeout", f"{timeout:.0f}s",
        "-nostdin",
        "-trace_stat", "-stf", str(workdir / "sipp_stats.csv"), "-fd", "1",
        "-trace_screen", "-screen_file", str(workdir / "sipp_screen.log"),
        "-trace_err", "-error_file", str(workdir / "sipp_errors.log"),
    ]  # fmt: skip


# ----------------------------------------------------------------- the run


@dataclass
class LoadResult:
    live: dict[str, float]
    same_calls: dict[str, float]
    scenario: dict[str, Estimate]
    replications: int
    duration: float
    seed: int
    agents: AgentStats
    sipp: dict[str, str]
    warnings: list[str]
    seconds: float

    def gaps(self) -> dict[str, float]:
        """Live minus the same-calls prediction, in points, for the service level and the abandonment."""
        return {k: 100 * (self.live[k] - self.same_calls[k]) for k in ("service_level", "abandon_rate")}

    def to_json(self) -> dict[str, Any]:
        def est(e: Estimate) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else v) for k, v in dataclasses.asdict(e).items()}

        return {
            "duration_s": self.duration,
            "seed": self.seed,
            "replications": self.replications,
            "live": {k: self.live[k] for k in (*COMPARED, "answered_within_t", "abandoned_short", "ring_no_answer")},
            "same_calls": {k: self.same_calls[k] for k in COMPARED},
            "scenario": {k: est(self.scenario[k]) for k in COMPARED},
            "gap_points": self.gaps(),
            "agents": dataclasses.asdict(self.agents),
            "sipp": self.sipp,
            "warnings": self.warnings,
            "seconds": self.seconds,
        }


@contextmanager
def _agents(*args: Any) -> Iterator[Agents]:
    agents = Agents(*args)
    try:
        yield agents
    finally:
        agents.close()


def run_load(
    plan: Plan,
    target: str,
    *,
    password: Callable[[str], str],
    metrics_url: str,
    duration: float | None = None,
    seed: int | None = None,
    replications: int = 10,
    max_calls: int = 5000,
    drain: float = 600.0,
    sipp: str | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadResult:
    """Play ``plan`` to the server at ``target`` and set the measured KPIs beside the simulator's."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    problems = replay_problems(plan)
    if problems:
        raise LoadError("this scenario cannot be played over SIP:\n  " + "\n  ".join(problems))
    ld = plan.load
    assert ld is not None
    host, port = loopback_target(target)
    sipp = sipp or shutil.which("sipp")
    if sipp is None:
        raise LoadError("SIPp is needed for the callers (Debian: apt-get install sip-tester)")
    import_pyvoip()
    seed = plan.seed if seed is None else seed
    duration = plan.duration if duration is None else min(duration, plan.duration)
    if duration <= 0:
        raise LoadError("--duration must be above 0")
    calls = draw_calls(plan, seed, duration)
    if not calls:
        raise LoadError(f"no call arrives in the first {duration:.0f} s of the scenario")
    if len(calls) > max_calls:
        raise LoadError(f"{len(calls)} calls in {duration:.0f} s: above --max-calls {max_calls}")
    warnings = _warnings(plan)
    say(f"{len(calls)} calls in {duration:.0f} s; predicting")
    same = predict_same_calls(plan, calls, duration, seed)
    scenario = predict_scenario(plan, duration, replications)
    before = scrape(metrics_url)
    warnings += _threshold_warnings(plan, before)
    tmp = tempfile.TemporaryDirectory(prefix="frontdesk-load-") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    try:
        with _agents(plan, calls, host, port, password, seed) as agents:
            agents.staff(0)
            say(f"{sum(len(v) for v in agents.on.values())} agents registered; calling")
            lead = 2.0 + max(i / LAUNCH_RATE - c.dial_at(ld.key_delay) for i, c in enumerate(calls))
            t0 = time.time() + max(lead, 2.0)
            write_callers(calls, ld, t0, work)
            last = max(c.dial_at(ld.key_delay) for c in calls)
            bound = (t0 - time.time()) + last + drain
            cmd = sipp_command(sipp, host, port, ld, len(calls), bound, work)
            mono0 = time.monotonic() + (t0 - time.time())
            with (work / "sipp.out").open("wb") as out:
                proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
                try:
                    _follow(proc, plan, agents, mono0, duration, bound + 15, say)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            agent_stats = agents.stats
        time.sleep(0.5)  # the last BYEs reach the engine's books
        after = scrape(metrics_url)
        stats = _sipp_stats(work / "sipp_stats.csv")
        if stats.get("TotalCallCreated") != str(len(calls)):
            tail = (work / "sipp.out").read_text(errors="replace")[-2000:]
            raise LoadError(
                f"SIPp placed {stats.get('TotalCallCreated', 'no')} of the {len(calls)} calls "
                f"(exit status {proc.returncode}):\n{tail}"
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    live = measured(before, after, calls)
    return LoadResult(
        live, same, scenario, replications, duration, seed, agent_stats, stats, warnings,
        time.perf_counter() - started,
    )  # fmt: skip


def _follow(
    proc: subprocess.Popen[bytes],
    plan: Plan,
    agents: Agents,
    mono0: float,
    duration: float,
    bound: float,
    say: Callable[[str], None],
) -> None:
    """Wait for SIPp, changing the roster at block edges and saying how far the run is."""
    block = 0
    deadline = time.monotonic() + bound
    next_note = time.monotonic() + 10
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            raise LoadError(f"the run did not end within {bound:.0f} s")
        due = int((now - mono0) // plan.block_seconds) if now > mono0 else 0
        if due > block and due < plan.blocks:
            block = due
            agents.staff(block)
        if now >= next_note:
            next_note = now + 10
            elapsed = max(0.0, now - mono0)
            if elapsed < duration:
                say(f"{elapsed:.0f}/{duration:.0f} s of arrivals played; {agents.stats.answered} answered")
            else:
                say(f"every call placed; waiting for the last ones to end ({agents.stats.answered} answered)")
        time.sleep(0.1)


def _sipp_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = [r.split(";") for r in path.read_text(errors="replace").splitlines() if r]
    if len(rows) < 2:
        return {}
    row = dict(zip(rows[0], rows[-1], strict=False))
    return {k: row[k] for k in ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)") if k in row}


def _warnings(plan: Plan) -> list[str]:
    out = []
    if plan.ring_delay.expected < PYVOIP_ANSWER_DELAY:
        out.append(
            f"the scenario's agents answer in {plan.ring_delay.expected:.1f} s on average; pyVoIP phones take "
            f"at least {PYVOIP_ANSWER_DELAY:.0f} s: the live waits will be longer"
        )
    return out


def _threshold_warnings(plan: Plan, scraped: Mapping[str, float]) -> list[str]:
    out = []
    for spec in plan.model.queues:
        live = scraped.get(f"threshold.{spec.name}")
        if live is None:
            out.append(f"the server has no queue {spec.name!r}")
        elif abs(live - spec.service_level_t) > 1e-9:
            out.append(
                f"queue {spec.name!r}: the server's service-level threshold is {live:g} s, the scenario's "
                f"{spec.service_level_t:g} s (name the server's config in server_config)"
            )
    return out


# ----------------------------------------------------------------- output


def _fmt(key: str, v: float) -> str:
    if key in ("service_level", "abandon_rate"):
        return f"{100 * v:.1f} %"
    if key == "asa_s":
        return f"{v:.2f} s"
    return f"{v:.0f}"


def _fmt_est(key: str, e: Estimate) -> str:
    if math.isnan(e.ci95):
        return _fmt(key, e.mean)
    if key in ("service_level", "abandon_rate"):
        return f"{100 * e.mean:.1f} ± {100 * e.ci95:.1f} %"
    if key == "asa_s":
        return f"{e.mean:.2f} ± {e.ci95:.2f} s"
    return f"{e.mean:.0f} ± {e.ci95:.0f}"


LABELS = {
    "calls": "calls placed",
    "diverted": "took a diversion key",
    "offered": "joined a queue",
    "answered": "answered by an agent",
    "abandoned": "abandoned",
    "overflowed": "overflowed",
    "service_level": "service level",
    "asa_s": "ASA",
    "abandon_rate": "abandonment",
}


def table(result: LoadResult) -> str:
    head = ("", "live", "simulator, same calls", f"simulator, scenario ({result.replications} runs, 95 % CI)")
    rows = [head]
    for k in COMPARED:
        rows.append(
            (LABELS[k], _fmt(k, result.live[k]), _fmt(k, result.same_calls[k]), _fmt_est(k, result.scenario[k]))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    gaps = result.gaps()
    lines.append("")
    lines.append(
        f"live - same calls: service level {gaps['service_level']:+.1f} points, "
        f"abandonment {gaps['abandon_rate']:+.1f} points"
    )
    a = result.agents
    lines.append(
        f"agents: {a.rings} rings, {a.answered} answered, {a.talked} talked to the end, "
        f"{a.ended_by_server} ended by the server first, {a.left_ringing} left ringing; SIPp: "
        + ", ".join(f"{k} {v}" for k, v in result.sipp.items())
    )
    for w in result.warnings:
        lines.append(f"warning: {w}")
    for e in a.errors[:10]:
        lines.append(f"agent error: {e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk load",
        description="Play a scenario's calls to a running server over SIP (SIPp callers, pyVoIP agents) and "
        "compare the measured KPIs with the simulator's prediction (docs/sim.md).",
    )
    p.add_argument("scenario", help="scenario YAML with a `load` section")
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="the server's SIP address (loopback only)")
    p.add_argument("--metrics", metavar="URL", help="the server's /metrics (default: http://HOST:8080/metrics)")
    p.add_argument(
        "--password",
        default="{agent}",
        metavar="TEMPLATE",
        help="the agents' SIP password; {agent} is replaced by the agent's name (default: {agent})",
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="play the first SECONDS of the scenario only")
    p.add_argument("--seed", type=int, help="the seed of the calls (default: the scenario's)")
    p.add_argument("--replications", "-n", type=int, help="simulator runs for the scenario column (default: its own)")
    p.add_argument("--max-calls", type=int, default=5000, help="refuse a run with more calls (default 5000)")
    p.add_argument("--drain", type=float, default=600.0, metavar="SECONDS", help="time allowed after the last call")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--workdir", metavar="DIR", help="keep SIPp's call list, statistics and screen here")
    p.add_argument(
        "--tolerance",
        type=float,
        metavar="POINTS",
        help="exit 1 unless the live service level and abandonment are within POINTS of the same-calls prediction",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from sim.scenario import ScenarioError, load_scenario

    args = build_parser().parse_args(argv)
    try:
        plan = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    template: str = args.password
    try:
        host, _ = loopback_target(args.target)
        result = run_load(
            plan,
            args.target,
            password=lambda agent: template.replace("{agent}", agent),
            metrics_url=args.metrics or f"http://{host}:8080/metrics",
            duration=args.duration,
            seed=args.seed,
            replications=args.replications or plan.replications,
            max_calls=args.max_calls,
            drain=args.drain,
            workdir=Path(args.workdir) if args.workdir else None,
            progress=lambda msg: print(f"load: {msg}", file=sys.stderr, flush=True),
        )
    except (LoadError, ImportError) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=1))
    if args.tolerance is not None:
        gaps = result.gaps()
        if any(abs(g) > args.tolerance for g in gaps.values()):
            print(f"load: beyond the tolerance of {args.tolerance:g} points", file=sys.stderr)
            return 1
    return 0

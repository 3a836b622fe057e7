"""A scenario compiled for the simulator: plain frozen data, like a Ciw network.

``sim.scenario`` reads and checks the YAML file and builds a :class:`Plan`;
``sim.simulation`` runs it. Everything here is stdlib and ``queueing`` only: a
plan can also be written by hand in a test. Times are seconds from the
start of the run (time 0 is the start of block 0).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec

DistKind = Literal["exponential", "lognormal", "constant", "empirical", "never"]
Sampler = Callable[[random.Random], float]


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution of seconds: handle times, patience, ring delays, redial delays."""

    kind: DistKind
    mean: float = 0.0  # exponential, lognormal; the value of a constant
    sd: float = 0.0  # lognormal
    values: tuple[float, ...] = ()  # empirical: drawn uniformly from these

    @property
    def expected(self) -> float:
        if self.kind == "never":
            return math.inf
        if self.kind == "empirical":
            return sum(self.values) / len(self.values)
        return self.mean

    def sampler(self) -> Sampler:
        """A function of the run's random generator that draws one value."""
        kind, mean = self.kind, self.mean
        if kind == "exponential":
            rate = 1.0 / mean
            return lambda rng: rng.expovariate(rate)
        if kind == "lognormal":
            sigma2 = math.log1p((self.sd / mean) ** 2)
            mu, sigma = math.log(mean) - sigma2 / 2, math.sqrt(sigma2)
            return lambda rng: rng.lognormvariate(mu, sigma)
        if kind == "constant":
            return lambda rng: mean
        if kind == "empirical":
            values = self.values
            return lambda rng: values[int(rng.random() * len(values))]
        return lambda rng: math.inf


def exponential(mean: float) -> Dist:
    return Dist("exponential", mean=mean)


def constant(value: float) -> Dist:
    return Dist("constant", mean=value)


NEVER = Dist("never")


@dataclass(frozen=True, slots=True)
class RateStep:
    """Poisson arrivals at ``rate`` calls per second during [start, end)."""

    start: float
    end: float
    rate: float


@dataclass(frozen=True, slots=True)
class Source:
    """One stream of callers: the base traffic, or a fault surge of one caller group (R6)."""

    name: str
    steps: tuple[RateStep, ...]
    group: str | None = None  # every caller of this source is in this group; None: drawn from the group shares
    queue: str | None = None  # every caller goes to this queue; None: drawn from the queue mix
    notice_resolves: float = 0.0  # R6: share who hang up satisfied after the targeted notice

    def expected_calls(self, start: float, end: float) -> float:
        return sum(s.rate * max(0.0, min(end, s.end) - max(start, s.start)) for s in self.steps)


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One caller given in full (for replaying a recorded day, and the parity test): no draws."""

    at: float
    queue: str
    handle: float  # talk time once answered
    patience: float = math.inf  # hangs up this long after joining, if still not answered
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Team:
    """Agents rostered per block; ``on_phones`` is after shrinkage."""

    name: str
    skills: Mapping[str, int]
    rostered: tuple[int, ...]
    on_phones: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Trigger:
    """When a reserve echelon is called in; any condition set is enough (None: not used)."""

    ewt: float | None = None  # a queue's EWT at or above, seconds
    queue_length: int | None = None  # callers waiting in a queue, at or above
    service_level: float | None = None  # the block's service level so far below (with at least 10 calls decided)
    surge: bool = False  # surge mode on

    def fires(self, ewt: float, queue_length: int, service_level: float | None, surge: bool) -> bool:
        return (
            (self.ewt is not None and ewt >= self.ewt)
            or (self.queue_length is not None and queue_length >= self.queue_length)
            or (self.service_level is not None and service_level is not None and service_level < self.service_level)
            or (self.surge and surge)
        )


@dataclass(frozen=True, slots=True)
class Reserve:
    """An echelon of the R17 reserve: online ``delay`` seconds after its trigger, held at least ``min_online``."""

    name: str
    agents: int
    skills: Mapping[str, int]
    when: Trigger
    delay: float = 600.0
    min_online: float = 1800.0


RedialAfter = Literal["abandoned", "peak_shaving", "declined"]


@dataclass(frozen=True, slots=True)
class Redial:
    """Callers who did not get through call again: blind repeated dialling makes a surge worse."""

    probability: float = 0.0
    delay: Dist = field(default_factory=lambda: exponential(300.0))
    max_attempts: int = 3  # calls in all, the first one included
    after: frozenset[RedialAfter] = frozenset({"abandoned", "peak_shaving", "declined"})


@dataclass(frozen=True, slots=True)
class Callbacks:
    """The callback list (docs/callbacks.md) as the server's dispatcher works it."""

    take_up: float = 0.7  # share of callers overflowed to "callback" or "message" who book one
    promise_margin: float = 300.0
    max_age: float = 86400.0
    dispatch_interval: float = 2.0
    reserve_agents: int = 1  # ready agents kept for inbound before a callback takes one
    customer_answers: float = 1.0  # share of dial attempts the customer answers
    max_attempts: int = 3  # dial attempts in all (the server's callbacks.retry.max_attempts)
    retry_delay: float = 600.0  # seconds between two attempts (callbacks.retry.delay)
    customer_ring: float = 30.0  # seconds an unanswered customer's phone rings (the dialer's limit)
    call_again: float = 0.0  # share of callers who booked and still call again (after the redial delay)


@dataclass(frozen=True, slots=True)
class Diversion:
    """Callers who leave at the IVR: the hot-topic key (R7) and self-service (R9, R13)."""

    hotkey: float = 0.0
    self_service: float = 0.0
    when: Literal["always", "surge"] = "surge"


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How ``frontdesk load`` plays the scenario to a running server over SIP (sim/live/load.py)."""

    number: str = "100"  # what the callers dial
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # queue -> key; none: straight in
    hotkey_key: str | None = None
    self_service_key: str | None = None
    key_delay: float = 0.5  # seconds from the answer to the key (the caller joins the queue then)
    leave_after: float = 10.0  # a caller who took a diversion key hangs up this long after it
    agents: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))  # team -> agents
    first_number: int = 4470000000  # callers' numbers count up from here


@dataclass(frozen=True, slots=True)
class SurgeCommand:
    """A surge switch event at ``at``: ops (manual; on=None releases) or a daily window (schedule)."""

    at: float
    on: bool | None
    cause: Literal["manual", "schedule"]


def team_agent_ids(team: str, peak: int) -> list[str]:
    """The agent ids of a team (or reserve echelon) with at most ``peak`` agents on the phones at once.

    An agent whose shift ends during a call stays logged in until it is over,
    and is taken back first when the team grows again, so ``peak`` ids are enough.
    """
    return [f"{team}-{i:03d}" for i in range(1, peak + 1)]


def agent_specs(teams: tuple[Team, ...], reserves: tuple[Reserve, ...], max_misses: int = 2) -> tuple[AgentSpec, ...]:
    """Every agent the simulator may log in, with its team's skills: the model must list them all."""
    specs: list[AgentSpec] = []
    for name, peak, skills in [(t.name, max(t.on_phones, default=0), t.skills) for t in teams] + [
        (r.name, r.agents, r.skills) for r in reserves
    ]:
        frozen = MappingProxyType(dict(skills))
        specs.extend(AgentSpec(a, frozen, max_misses) for a in team_agent_ids(name, peak))
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    model: Model
    block_seconds: float
    blocks: int
    sources: tuple[Source, ...]
    queue_mix: tuple[tuple[str, float], ...]  # (queue, share), shares sum to 1
    handle_time: Mapping[str, Dist]  # per queue (talk time; wrap-up is the queue's setting)
    patience: Dist = NEVER
    # (queue, caller group or None) -> (tier, urgent); missing: the queue's lowest tier, not urgent
    tiers: Mapping[tuple[str, str | None], tuple[str, bool]] = field(default_factory=lambda: MappingProxyType({}))
    group_shares: tuple[tuple[str, float], ...] = ()  # base callers in each caller group (the rest in none)
    ring_delay: Dist = field(default_factory=lambda: constant(3.0))
    answer_probability: float = 1.0
    redial: Redial = Redial()
    callbacks: Callbacks | None = Callbacks()
    diversion: Diversion = Diversion()
    teams: tuple[Team, ...] = ()
    reserves: tuple[Reserve, ...] = ()
    surge_commands: tuple[SurgeCommand, ...] = ()
    start_minute: int = 0  # clock time of time 0, minutes after midnight (for labels)
    sample_every: float = 60.0
    warmup_blocks: int = 0
    seed: int = 1
    replications: int = 10
    service_level_target: float = 0.8
    service_level_t: float = 20.0
    shrinkage: float = 0.0  # share of rostered agents off the phones (the teams' on_phones already allow for it)
    load: LoadPlan | None = None  # the scenario's `load` section, for `frontdesk load`

    @property
    def duration(self) -> float:
        return self.blocks * self.block_seconds

    def block_label(self, block: int) -> str:
        minute = self.start_minute + int(block * self.block_seconds // 60)
        return f"{minute // 60 % 24:02d}:{minute % 60:02d}"

    def mean_handle(self) -> float:
        """Mean talk plus wrap-up over the queue mix (seconds an agent is held per call)."""
        wrap = {q.name: q.wrap_up for q in self.model.queues}
        return sum(share * (self.handle_time[q].expected + wrap[q]) for q, share in self.queue_mix)

    def offered_per_block(self) -> list[float]:
        """Expected calls reaching the IVR per block, before diversions and redials."""
        b = self.block_seconds
        return [sum(s.expected_calls(i * b, (i + 1) * b) for s in self.sources) for i in range(self.blocks)]

    def with_changes(self, **changes: object) -> Plan:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def single_queue_plan(
    *,
    arrival_rate: float,
    aht: float,
    agents: int,
    patience: float | None = None,
    hours: float = 8.0,
    block_seconds: float = 1800.0,
    ring_delay: float = 0.0,
    wrap_up: float = 0.0,
    seed: int = 1,
    replications: int = 10,
    warmup_blocks: int = 0,
    service_level_t: float = 20.0,
    queue: QueueSpec | None = None,
) -> Plan:
    """A stationary M/M/N (or M/M/N+M with ``patience``) call center: one queue, one team, no limits that bite.

    For checking the engine against Erlang C and A, and for the benchmark.
    """
    spec = queue or QueueSpec(
        name="general",
        max_wait=Limit(1e9, 1e9),
        max_length=Limit(10**9, 10**9),
        announce_every=Limit(1e9, 1e9),
        ring_timeout=1e6,
        wrap_up=wrap_up,
        service_level_t=service_level_t,
        abandon_grace=0.0,
        initial_aht=aht,
    )
    blocks = max(1, round(hours * 3600 / block_seconds))
    team = Team("agents", MappingProxyType({}), (agents,) * blocks, (agents,) * blocks)
    model = Model(
        queues=(spec,),
        agents=agent_specs((team,), ()),
        surge=SurgeSpec(auto=False, peak_shaving_ewt=None),
    )
    return Plan(
        name=f"M/M/{agents}" + ("+M" if patience else ""),
        model=model,
        block_seconds=block_seconds,
        blocks=blocks,
        sources=(Source("base", (RateStep(0.0, blocks * block_seconds, arrival_rate),)),),
        queue_mix=((spec.name, 1.0),),
        handle_time=MappingProxyType({spec.name: exponential(aht - spec.wrap_up if spec.wrap_up < aht else aht)}),
        patience=exponential(patience) if patience else NEVER,
        ring_delay=constant(ring_delay),
        callbacks=None,
        teams=(team,),
        seed=seed,
        replications=replications,
        warmup_blocks=warmup_blocks,
        service_level_t=spec.service_level_t,
        service_level_target=spec.service_level_target,
    )

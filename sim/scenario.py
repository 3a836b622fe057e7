"""Scenario files: one YAML file per planning question, checked at load like the server's config.

A bad file is refused with :class:`ScenarioError`, whose message names the
file, the line and the field (``monday.yaml:12: arrivals.surges.0.factor: ...``);
a bad CSV names the CSV file and its line. ``load_scenario`` returns the
:class:`sim.plan.Plan` the simulator runs. docs/sim.md is the reference.

The queue, tier and surge settings are the server's own (``ivr.settings.config``
``QueueSettings`` and ``SurgeSettings``, turned into the engine's model by
``ivr.settings.queues``): a scenario can name the server's config file and plan
with exactly the limits the server runs. This is the one place ``sim``
reads ``ivr`` (its configuration schema, not the router).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ivr.flow.config import Day, Minutes, Name
from ivr.settings.config import ConfigError, QueueSettings, SkillLevel, SurgeSettings, explain, line_of, load_config
from ivr.settings.queues import queue_spec, surge_spec, tier_of
from queueing.model import Model, ModelError
from sim.plan import (
    NEVER,
    Callbacks,
    Dist,
    Diversion,
    LoadPlan,
    Plan,
    RateStep,
    Redial,
    Reserve,
    Source,
    SurgeCommand,
    Team,
    Trigger,
    agent_specs,
)


class ScenarioError(Exception):
    """A scenario problem, worded for the planner who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- distributions


def _dist_shorthand(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return {"dist": "constant", "value": v}
    return v


class DistSettings(_Strict):
    """Seconds drawn from a distribution; a plain number is a constant."""

    dist: Literal["exponential", "lognormal", "constant", "empirical", "never"]
    mean: float | None = Field(None, gt=0, allow_inf_nan=False, description="exponential, lognormal")
    sd: float | None = Field(None, ge=0, allow_inf_nan=False, description="lognormal standard deviation")
    value: float | None = Field(None, ge=0, allow_inf_nan=False, description="constant")
    values: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(None, min_length=1)
    csv: str | None = Field(None, description="empirical: a CSV file of seconds (relative to the scenario)")
    column: str | None = Field(None, description="empirical CSV column (default: the first)")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> DistSettings:
        need = {"exponential": ("mean",), "lognormal": ("mean", "sd"), "constant": ("value",)}.get(self.dist, ())
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.dist} distribution needs {name}")
        allowed = set(need) | ({"values", "csv", "column"} if self.dist == "empirical" else set())
        for name in ("mean", "sd", "value", "values", "csv", "column"):
            if name not in allowed and getattr(self, name) is not None:
                raise ValueError(f"{name} does not belong to a {self.dist} distribution")
        if self.dist == "empirical" and (self.values is None) == (self.csv is None):
            raise ValueError("an empirical distribution needs values or csv (one of them)")
        return self


Distribution = Annotated[DistSettings, BeforeValidator(_dist_shorthand)]


def _exp(mean: float) -> DistSettings:
    return DistSettings(dist="exponential", mean=mean)


# ---------------------------------------------------------------- arrivals


class SurgeShape(_Strict):
    """Extra traffic on top of the base arrivals (docs/sim.md, "Surge shapes")."""

    shape: Literal["step", "ramp", "spike", "fault"]
    start: Minutes = Field(description='"HH:MM"')
    end: Minutes | None = Field(None, description='"HH:MM"; default: the end of the run')
    peak: Minutes | None = Field(None, description="ramp: when it is at its top (default: end)")
    factor: float | None = Field(None, gt=0, allow_inf_nan=False, description="multiplier of the base rate")
    decay: float | None = Field(None, gt=0, allow_inf_nan=False, description="spike/fault: seconds to fall by e")
    group: Name | None = Field(None, description="fault: the caller group that calls")
    calls: float | None = Field(None, ge=0, allow_inf_nan=False, description="fault: extra calls per block")
    queue: Name | None = Field(None, description="fault: the queue they join (default: the queue mix)")
    notice_resolves: float = Field(0.0, ge=0, le=1, description="fault: R6 share who hang up after the notice")

    @model_validator(mode="after")
    def _fields_of_shape(self) -> SurgeShape:
        if self.shape == "fault":
            if self.group is None:
                raise ValueError("a fault surge names the caller group that calls (group)")
            if (self.calls is None) == (self.factor is None):
                raise ValueError("a fault surge needs calls (extra per block) or factor (of the base), one of them")
        else:
            if self.factor is None:
                raise ValueError(f"a {self.shape} surge needs a factor")
            for name in ("group", "calls", "queue"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} belongs to a fault surge only")
            if self.notice_resolves:
                raise ValueError("notice_resolves belongs to a fault surge only")
        if self.peak is not None and self.shape != "ramp":
            raise ValueError("peak belongs to a ramp only")
        if self.shape == "ramp" and self.peak is None and self.end is None:
            raise ValueError("a ramp needs its top: peak (then down to x1 at end, or held) or end (up to it)")
        if self.decay is not None and self.shape not in ("spike", "fault"):
            raise ValueError("decay belongs to a spike or a fault surge only")
        return self


PerBlock = list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]


class ArrivalSettings(_Strict):
    """Calls reaching the IVR per block: a table (``per_block``) or a CSV of historic counts."""

    per_block: PerBlock | None = Field(None, description="calls per block, all queues (split by the mix)")
    per_queue: dict[Name, PerBlock] | None = Field(None, description="calls per block for each queue")
    csv: str | None = Field(None, description="CSV with a header: start (optional), calls or one column per queue")
    mix: dict[Name, Annotated[float, Field(ge=0)]] | None = Field(None, description="queue -> share of the calls")
    surges: list[SurgeShape] = Field(default_factory=list)
    step: float = Field(60.0, ge=1, le=1800, description="seconds of each constant-rate step of a surge shape")

    @model_validator(mode="after")
    def _one_source(self) -> ArrivalSettings:
        if sum(x is not None for x in (self.per_block, self.per_queue, self.csv)) != 1:
            raise ValueError("give the arrivals as per_block, per_queue or csv (one of them)")
        return self


# ---------------------------------------------------------------- callers


RedialAfter = Literal["abandoned", "peak_shaving", "declined"]


def _redial_after_all() -> list[RedialAfter]:
    return ["abandoned", "peak_shaving", "declined"]


class RedialSettings(_Strict):
    probability: float = Field(0.0, ge=0, le=1, description="share who call again")
    delay: Distribution = Field(default_factory=lambda: _exp(300.0), description="seconds before they do")
    max_attempts: int = Field(3, ge=1, le=100, description="calls in all, the first included")
    after: list[RedialAfter] = Field(default_factory=_redial_after_all, description="who redials")


class DiversionSettings(_Strict):
    hotkey: float = Field(0.0, ge=0, le=1, description="R7: share who take the hot-topic key and leave")
    self_service: float = Field(0.0, ge=0, le=1, description="R9/R13: share who go to self-service")
    when: Literal["always", "surge"] = Field("surge", description="offered always, or only in surge mode")

    @model_validator(mode="after")
    def _at_most_all(self) -> DiversionSettings:
        if self.hotkey + self.self_service > 1:
            raise ValueError("hotkey + self_service must not exceed 1")
        return self


class CallerSettings(_Strict):
    handle_time: Distribution = Field(default_factory=lambda: _exp(180.0), description="talk time, seconds")
    handle_time_by_queue: dict[Name, Distribution] = Field(default_factory=dict)
    patience: Distribution | None = Field(
        default_factory=lambda: _exp(120.0), description="seconds a caller holds on; null: for ever"
    )
    groups: dict[Name, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="caller group -> share of the base callers in it (tiers, urgent, faults)"
    )
    redial: RedialSettings = RedialSettings()
    diversion: DiversionSettings = DiversionSettings()

    @model_validator(mode="after")
    def _shares(self) -> CallerSettings:
        if sum(self.groups.values()) > 1 + 1e-9:
            raise ValueError("the caller group shares add up to more than 1")
        return self


# ---------------------------------------------------------------- agents


def _per_block(v: Any) -> Any:
    return [v] if isinstance(v, int) and not isinstance(v, bool) else v


class TeamSettings(_Strict):
    name: Name
    skills: dict[Name, SkillLevel] = Field(default_factory=dict)
    per_block: Annotated[list[Annotated[int, Field(ge=0, le=10000)]], BeforeValidator(_per_block)] = Field(
        description="agents rostered in each block; one number for every block"
    )


class TriggerSettings(_Strict):
    ewt: float | None = Field(None, ge=0, description="a queue's estimated wait at or above, seconds")
    queue_length: int | None = Field(None, ge=1, description="callers waiting in a queue, at or above")
    service_level: float | None = Field(None, ge=0, le=1, description="the block's service level so far below")
    surge: bool = Field(False, description="surge mode on")

    @model_validator(mode="after")
    def _something(self) -> TriggerSettings:
        if self.ewt is None and self.queue_length is None and self.service_level is None and not self.surge:
            raise ValueError("a reserve needs a trigger: ewt, queue_length, service_level or surge")
        return self


class ReserveSettings(_Strict):
    name: Name
    agents: int = Field(ge=1, le=10000)
    skills: dict[Name, SkillLevel] = Field(default_factory=dict)
    when: TriggerSettings
    delay: float = Field(600.0, ge=0, description="seconds from the trigger to being on the phones")
    min_online: float = Field(1800.0, ge=0, description="seconds kept on the phones at least")


class AgentsSettings(_Strict):
    teams: list[TeamSettings] = Field(min_length=1)
    shrinkage: float = Field(0.0, ge=0, lt=1, description="share of rostered time off the phones")
    ring_delay: Distribution = Field(
        default_factory=lambda: DistSettings(dist="constant", value=3.0), description="seconds to answer a ring"
    )
    answer_probability: float = Field(1.0, ge=0, le=1, description="share of rings the agent answers")
    reserves: list[ReserveSettings] = Field(default_factory=list, max_length=10, description="R17 echelons, in order")


class CallbackSimSettings(_Strict):
    enabled: bool = True
    take_up: float = Field(0.7, ge=0, le=1, description="share of callers offered a callback (or message) who book")
    promise_margin: float = Field(300.0, ge=0)
    max_age: float = Field(86400.0, gt=0)
    dispatch_interval: float = Field(2.0, gt=0)
    reserve_agents: int = Field(1, ge=0)
    customer_answers: float = Field(1.0, ge=0, le=1, description="share of dial attempts the customer answers")
    max_attempts: int = Field(3, ge=1, le=20, description="dial attempts in all before the callback fails")
    retry_delay: float = Field(600.0, gt=0, le=86400, description="seconds between two attempts")
    customer_ring: float = Field(30.0, gt=0, le=300, description="seconds an unanswered customer's phone rings")
    call_again: float = Field(0.0, ge=0, le=1, description="share of callers who booked and still call again")


Key = Annotated[str, Field(pattern=r"^[0-9*#]$")]


class LoadSettings(_Strict):
    """How `frontdesk load` plays this scenario to a running server (docs/sim.md)."""

    number: str = Field("100", pattern=r"^[0-9A-Za-z*#+._-]{1,32}$", description="what the callers dial")
    keys: dict[Name, Key] = Field(
        default_factory=dict, description="queue -> the key that joins it; none: the number leads to the queue"
    )
    hotkey_key: Key | None = Field(None, description="R7: the key of callers who take the hot-topic answer")
    self_service_key: Key | None = Field(None, description="R9: the key of callers who go to self-service")
    key_delay: float = Field(0.5, ge=0, le=60, description="seconds from the answer to the key")
    leave_after: float = Field(10.0, gt=0, le=3600, description="a diverted caller hangs up this long after the key")
    agents: dict[Name, list[Name]] = Field(
        description="team -> the server's agents who play it (as many as its busiest block)"
    )
    first_number: int = Field(4470000000, ge=0, lt=10**14, description="callers' numbers count up from this one")


class SurgeSwitchSettings(_Strict):
    at: Minutes = Field(description='"HH:MM"')
    on: bool | None = Field(description="true, false, or null to release the manual switch")


class Scenario(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    seed: int = 1
    replications: int = Field(10, ge=1, le=10000)
    block_minutes: Literal[15, 30] = 30
    start: Minutes = Field(480, description='clock time of the first block, "HH:MM"')
    day: Day | None = Field(None, description="weekday, for the days of the surge schedule windows")
    warmup_blocks: int = Field(0, ge=0, description="blocks left out of the totals")
    sample_every: float = Field(60.0, gt=0, le=1800, description="seconds between queue-length samples")
    server_config: str | None = Field(None, description="the server's YAML config: its queues and surge settings")
    queues: dict[Name, QueueSettings] | None = Field(None, description="as in the server config (docs/queueing.md)")
    surge: SurgeSettings | None = None
    surge_switch: list[SurgeSwitchSettings] = Field(default_factory=list, description="manual switch events")
    arrivals: ArrivalSettings
    callers: CallerSettings = CallerSettings()
    agents: AgentsSettings
    callbacks: CallbackSimSettings = CallbackSimSettings()
    load: LoadSettings | None = Field(None, description="for `frontdesk load`: what callers dial, who the agents are")


# ---------------------------------------------------------------- loading


def load_scenario(path: str | Path) -> Plan:
    """Read, check and compile a scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, filename: str = "<scenario>") -> Plan:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ScenarioError(f"{filename}:{mark.line + 1 if mark else 0}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{filename}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{filename}:1: a scenario is a mapping (name, arrivals, agents, ...)")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(explain(exc, node, filename)) from None
    return _Compiler(scenario, node, filename).plan()


class _Compiler:
    """From a checked Scenario to a Plan; cross-checks raise ScenarioError with the line."""

    def __init__(self, s: Scenario, node: Any, filename: str) -> None:
        self.s = s
        self.node = node
        self.filename = filename
        self.dir = Path(filename).parent
        self.block_seconds = s.block_minutes * 60.0

    def fail(self, loc: tuple[str | int, ...], msg: str) -> ScenarioError:
        return ScenarioError(f"{self.filename}:{line_of(self.node, loc)}: {'.'.join(map(str, loc))}: {msg}")

    def plan(self) -> Plan:
        s = self.s
        queues, surge = self._queue_settings()
        names = list(queues)
        counts = self._counts(names)
        blocks = len(next(iter(counts.values())))
        self.blocks = blocks
        self.duration = blocks * self.block_seconds
        groups = dict(s.callers.groups)
        for i, shape in enumerate(s.arrivals.surges):
            if shape.group is not None and shape.group not in groups:
                raise self.fail(
                    ("arrivals", "surges", i, "group"),
                    f"unknown caller group {shape.group!r}: list it under callers.groups",
                )
            if shape.queue is not None and shape.queue not in queues:
                raise self.fail(("arrivals", "surges", i, "queue"), f"unknown queue {shape.queue!r}")
        for qname, q in queues.items():
            for i, t in enumerate(q.tiers):
                for j, g in enumerate(t.groups):
                    if g not in groups:
                        raise self.fail(
                            ("queues", qname, "tiers", i, "groups", j),
                            f"unknown caller group {g!r}: list it under callers.groups",
                        )
            for j, g in enumerate(q.urgent_groups):
                if g not in groups:
                    raise self.fail(
                        ("queues", qname, "urgent_groups", j),
                        f"unknown caller group {g!r}: list it under callers.groups",
                    )
        mix = self._mix(names)
        for qname in s.callers.handle_time_by_queue:
            if qname not in queues:
                raise self.fail(("callers", "handle_time_by_queue", qname), f"unknown queue {qname!r}")
        teams = self._teams(blocks)
        reserves = tuple(
            Reserve(
                name=r.name,
                agents=r.agents,
                skills=MappingProxyType(dict(r.skills)),
                when=Trigger(r.when.ewt, r.when.queue_length, r.when.service_level, r.when.surge),
                delay=r.delay,
                min_online=r.min_online,
            )
            for r in s.agents.reserves
        )
        names_seen: set[str] = set()
        for name in [t.name for t in teams] + [r.name for r in reserves]:
            if name in names_seen:
                raise self.fail(("agents",), f"team or reserve {name!r} is listed twice")
            names_seen.add(name)
        try:
            model = Model(
                queues=tuple(queue_spec(name, q) for name, q in queues.items()),
                agents=agent_specs(teams, reserves),
                surge=surge_spec(surge),
            )
        except ModelError as exc:
            raise self.fail(("queues",), str(exc)) from None
        for spec in model.queues:
            if not any(a.can_take(spec.skills) for a in model.agents):
                raise self.fail(("agents", "teams"), f"no team or reserve has the skills of queue {spec.name!r}")
        handle = {
            q: self._dist(s.callers.handle_time_by_queue.get(q, s.callers.handle_time), ("callers", "handle_time"))
            for q in names
        }
        tiers: dict[tuple[str, str | None], tuple[str, bool]] = {}
        for qname, settings in queues.items():
            for group in [None, *groups]:
                tiers[(qname, group)] = tier_of(settings, frozenset() if group is None else frozenset({group}))
        cb = s.callbacks
        first = model.queues[0]
        return Plan(
            name=s.name,
            model=model,
            block_seconds=self.block_seconds,
            blocks=blocks,
            sources=self._sources(counts),
            queue_mix=tuple(mix.items()),
            handle_time=MappingProxyType(handle),
            patience=NEVER if s.callers.patience is None else self._dist(s.callers.patience, ("callers", "patience")),
            tiers=MappingProxyType(tiers),
            group_shares=tuple((g, share) for g, share in groups.items() if share > 0),
            ring_delay=self._dist(s.agents.ring_delay, ("agents", "ring_delay")),
            answer_probability=s.agents.answer_probability,
            redial=Redial(
                probability=s.callers.redial.probability,
                delay=self._dist(s.callers.redial.delay, ("callers", "redial", "delay")),
                max_attempts=s.callers.redial.max_attempts,
                after=frozenset(s.callers.redial.after),
            ),
            callbacks=(
                Callbacks(
                    cb.take_up,
                    cb.promise_margin,
                    cb.max_age,
                    cb.dispatch_interval,
                    cb.reserve_agents,
                    cb.customer_answers,
                    cb.max_attempts,
                    cb.retry_delay,
                    cb.customer_ring,
                    cb.call_again,
                )
                if cb.enabled
                else None
            ),
            diversion=Diversion(s.callers.diversion.hotkey, s.callers.diversion.self_service, s.callers.diversion.when),
            teams=teams,
            reserves=reserves,
            surge_commands=self._surge_commands(surge),
            start_minute=s.start,
            sample_every=s.sample_every,
            warmup_blocks=min(s.warmup_blocks, blocks - 1),
            seed=s.seed,
            replications=s.replications,
            service_level_target=first.service_level_target,
            service_level_t=first.service_level_t,
            shrinkage=s.agents.shrinkage,
            load=self._load(teams, names),
        )

    # -- pieces

    def _queue_settings(self) -> tuple[dict[str, QueueSettings], SurgeSettings]:
        s = self.s
        queues: dict[str, QueueSettings] = {"general": QueueSettings()}
        surge = SurgeSettings()
        if s.server_config is not None:
            path = self.dir / s.server_config
            try:
                config = load_config(path)
            except ConfigError as exc:
                raise self.fail(("server_config",), f"the server config is refused:\n{exc}") from None
            queues, surge = dict(config.queues), config.surge
        if s.queues is not None:
            queues = dict(s.queues)
        if s.surge is not None:
            surge = s.surge
        if not queues:
            raise self.fail(("queues",), "at least one queue")
        return queues, surge

    def _counts(self, names: list[str]) -> dict[str | None, list[float]]:
        """Calls per block: {None: totals} (split by the mix) or {queue: counts}."""
        a = self.s.arrivals
        counts: dict[str | None, list[float]]
        if a.per_queue is not None:
            for q in a.per_queue:
                if q not in names:
                    raise self.fail(("arrivals", "per_queue", q), f"unknown queue {q!r}")
            counts = {q: list(v) for q, v in a.per_queue.items()}
        elif a.per_block is not None:
            counts = {None: list(a.per_block)}
        else:
            assert a.csv is not None
            counts = self._read_counts_csv(self.dir / a.csv, names)
        lengths = {len(v) for v in counts.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise self.fail(
                ("arrivals", "per_queue" if a.per_queue is not None else "per_block" if a.per_block else "csv"),
                "every queue needs the same number of blocks, at least one",
            )
        return counts

    def _read_counts_csv(self, path: Path, names: list[str]) -> dict[str | None, list[float]]:
        rows = self._read_csv(path, ("arrivals", "csv"))
        if not rows:
            raise ScenarioError(f"{path}:1: empty: a header (start, calls or queue names) and one row per block")
        header = [h.strip() for h in rows[0][1]]
        columns = [h for h in header if h != "start"]
        if columns == ["calls"]:
            keys: list[str | None] = [None]
        else:
            unknown = [h for h in columns if h not in names]
            if unknown or not columns:
                wanted = ", ".join(names)
                raise ScenarioError(
                    f"{path}:1: columns are start (optional) and calls, or queue names ({wanted});"
                    f" not {', '.join(unknown) or 'nothing'}"
                )
            keys = list(columns)
        counts: dict[str | None, list[float]] = {k: [] for k in keys}
        start = self.s.start
        for index, (lineno, row) in enumerate(rows[1:]):
            if len(row) != len(header):
                raise ScenarioError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            values = dict(zip(header, (c.strip() for c in row), strict=True))
            if "start" in values:
                want = (start + index * self.s.block_minutes) % 1440
                got = values["start"]
                if got != f"{want // 60:02d}:{want % 60:02d}":
                    raise ScenarioError(
                        f"{path}:{lineno}: start {got!r}: expected {want // 60:02d}:{want % 60:02d}"
                        f" (one row per {self.s.block_minutes}-minute block from the scenario's start)"
                    )
            for key in keys:
                text = values["calls" if key is None else key]
                try:
                    n = float(text)
                except ValueError:
                    raise ScenarioError(
                        f"{path}:{lineno}: {'calls' if key is None else key}: {text!r} is not a number"
                    ) from None
                if not math.isfinite(n) or n < 0:
                    raise ScenarioError(f"{path}:{lineno}: {'calls' if key is None else key}: must be a number >= 0")
                counts[key].append(n)
        return counts

    def _read_csv(self, path: Path, loc: tuple[str | int, ...]) -> list[tuple[int, list[str]]]:
        """(line number, fields) of a CSV file; blank lines and # comments are skipped."""
        try:
            with path.open(newline="", encoding="utf-8") as f:
                numbered = list(enumerate(csv.reader(f), start=1))
        except OSError as exc:
            raise self.fail(loc, f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ScenarioError(f"{path}: not UTF-8 text") from None
        return [(n, r) for n, r in numbered if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]

    def _mix(self, names: list[str]) -> dict[str, float]:
        mix = self.s.arrivals.mix
        if mix is None:
            return {q: 1.0 / len(names) for q in names}
        for q in mix:
            if q not in names:
                raise self.fail(("arrivals", "mix", q), f"unknown queue {q!r}")
        total = sum(mix.values())
        if total <= 0:
            raise self.fail(("arrivals", "mix"), "the shares add up to 0")
        return {q: v / total for q, v in mix.items() if v > 0}

    def _load(self, teams: tuple[Team, ...], queues: list[str]) -> LoadPlan | None:
        ld = self.s.load
        if ld is None:
            return None
        for q in ld.keys:
            if q not in queues:
                raise self.fail(("load", "keys", q), f"unknown queue {q!r}")
        if len(queues) > 1 and set(ld.keys) != set(queues):
            missing = ", ".join(q for q in queues if q not in ld.keys)
            raise self.fail(("load", "keys"), f"with more than one queue every queue needs its key: {missing}")
        used = [k for k in (*ld.keys.values(), ld.hotkey_key, ld.self_service_key) if k is not None]
        if len(set(used)) != len(used):
            raise self.fail(("load", "keys"), "two choices share a key")
        seen: set[str] = set()
        for team in teams:
            names = ld.agents.get(team.name)
            if names is None:
                raise self.fail(("load", "agents"), f"team {team.name!r} needs its agents")
            if len(names) < max(team.on_phones, default=0):
                raise self.fail(
                    ("load", "agents", team.name),
                    f"{len(names)} agents for a team with up to {max(team.on_phones)} on the phones",
                )
            for name in names:
                if name in seen:
                    raise self.fail(("load", "agents", team.name), f"agent {name!r} is listed twice")
                seen.add(name)
        for name in ld.agents:
            if name not in {t.name for t in teams}:
                raise self.fail(("load", "agents", name), f"unknown team {name!r}")
        return LoadPlan(
            number=ld.number,
            keys=MappingProxyType(dict(ld.keys)),
            hotkey_key=ld.hotkey_key,
            self_service_key=ld.self_service_key,
            key_delay=ld.key_delay,
            leave_after=ld.leave_after,
            agents=MappingProxyType({k: tuple(v) for k, v in ld.agents.items()}),
            first_number=ld.first_number,
        )

    def _teams(self, blocks: int) -> tuple[Team, ...]:
        out = []
        shrink = self.s.agents.shrinkage
        for i, t in enumerate(self.s.agents.teams):
            rostered = list(t.per_block)
            if len(rostered) == 1:
                rostered *= blocks
            if len(rostered) != blocks:
                raise self.fail(
                    ("agents", "teams", i, "per_block"), f"{len(rostered)} blocks; the arrivals have {blocks}"
                )
            on = tuple(math.floor(n * (1 - shrink) + 0.5) for n in rostered)
            out.append(Team(t.name, MappingProxyType(dict(t.skills)), tuple(rostered), on))
        return tuple(out)

    def _dist(self, d: DistSettings, loc: tuple[str | int, ...]) -> Dist:
        if d.dist == "exponential":
            assert d.mean is not None
            return Dist("exponential", mean=d.mean)
        if d.dist == "lognormal":
            assert d.mean is not None and d.sd is not None
            return Dist("lognormal", mean=d.mean, sd=d.sd)
        if d.dist == "constant":
            assert d.value is not None
            return Dist("constant", mean=d.value)
        if d.dist == "never":
            return NEVER
        if d.values is not None:
            return Dist("empirical", values=tuple(d.values))
        assert d.csv is not None
        path = self.dir / d.csv
        numbered = self._read_csv(path, (*loc, "csv"))
        if not numbered:
            raise ScenarioError(f"{path}:1: empty")
        rows = [r for _, r in numbered]
        lines = [n for n, _ in numbered]
        header = [h.strip() for h in rows[0]]
        col = 0
        if d.column is not None:
            if d.column not in header:
                raise ScenarioError(f"{path}:1: no column {d.column!r} (columns: {', '.join(header)})")
            col = header.index(d.column)
        values = []
        for lineno, row in zip(lines[1:], rows[1:], strict=True):
            try:
                v = float(row[col])
            except (ValueError, IndexError):
                raise ScenarioError(f"{path}:{lineno}: {header[col]}: not a number of seconds") from None
            if not math.isfinite(v) or v < 0:
                raise ScenarioError(f"{path}:{lineno}: {header[col]}: must be >= 0 seconds")
            values.append(v)
        if not values:
            raise ScenarioError(f"{path}: no values under the header")
        return Dist("empirical", values=tuple(values))

    def _at(self, minute: int, *, end: bool = False) -> float:
        """Seconds from the run's start of a clock time (a time at or before the start is on the next day)."""
        offset = (minute - self.s.start) % 1440
        if end and offset == 0:
            offset = 1440
        return offset * 60.0

    def _sources(self, counts: dict[str | None, list[float]]) -> tuple[Source, ...]:
        a = self.s.arrivals
        b = self.block_seconds
        dt = a.step
        edges = _grid(self.duration, b, dt if a.surges else b)
        base_shapes = [sh for sh in a.surges if sh.shape != "fault"]
        sources = []
        for key, per in counts.items():
            steps = []
            for t0, t1 in edges:
                block = min(int(t0 // b), len(per) - 1)
                rate = per[block] / b * self._multiplier(base_shapes, (t0 + t1) / 2)
                steps.append(RateStep(t0, t1, rate))
            sources.append(Source("base" if key is None else f"base:{key}", _merge(steps), queue=key))
        total = [sum(v[i] for v in counts.values()) for i in range(self.blocks)]
        for i, sh in enumerate(a.surges):
            if sh.shape != "fault":
                continue
            start = self._at(sh.start)
            end = self._at(sh.end, end=True) if sh.end is not None else self.duration
            if end <= start:
                raise self.fail(("arrivals", "surges", i, "end"), "must be after start")
            steps = []
            for t0, t1 in _grid(self.duration, b, dt):
                mid = (t0 + t1) / 2
                if not start <= mid < end:
                    continue
                profile = math.exp(-(mid - start) / sh.decay) if sh.decay else 1.0
                block = min(int(t0 // b), self.blocks - 1)
                extra = sh.calls / b if sh.calls is not None else total[block] / b * (sh.factor or 1.0)
                steps.append(RateStep(t0, t1, extra * profile))
            sources.append(
                Source(
                    f"fault:{sh.group}",
                    _merge(steps),
                    group=sh.group,
                    queue=sh.queue,
                    notice_resolves=sh.notice_resolves,
                )
            )
        return tuple(sources)

    def _multiplier(self, shapes: list[SurgeShape], t: float) -> float:
        m = 1.0
        for sh in shapes:
            start = self._at(sh.start)
            end = self._at(sh.end, end=True) if sh.end is not None else math.inf
            if not start <= t < end:
                continue
            f = sh.factor or 1.0
            if sh.shape == "step":
                m *= f
            elif sh.shape == "spike":
                m *= 1 + (f - 1) * math.exp(-(t - start) / (sh.decay or 900.0))
            else:  # ramp: up from start to peak, then down to 1 at end (or held at the top)
                peak = self._at(sh.peak) if sh.peak is not None else (end if math.isfinite(end) else start)
                if t < peak:
                    m *= 1 + (f - 1) * (t - start) / (peak - start)
                elif math.isfinite(end) and end > peak and sh.peak is not None:
                    m *= f - (f - 1) * (t - peak) / (end - peak)
                else:
                    m *= f
        return m

    def _surge_commands(self, surge: SurgeSettings) -> tuple[SurgeCommand, ...]:
        cmds: list[SurgeCommand] = []
        for w in surge.schedule:
            if w.days is not None and self.s.day is not None and self.s.day not in w.days:
                continue
            start, end = self._at(w.start), self._at(w.end, end=True)
            if w.start <= self.s.start < w.end:
                start = 0.0
            if start < self.duration:
                cmds.append(SurgeCommand(start, True, "schedule"))
                if end < self.duration:
                    cmds.append(SurgeCommand(end, False, "schedule"))
        for sw in self.s.surge_switch:
            cmds.append(SurgeCommand(self._at(sw.at), sw.on, "manual"))
        return tuple(sorted(cmds, key=lambda c: c.at))


def _grid(duration: float, block: float, dt: float) -> list[tuple[float, float]]:
    """Steps of ``dt`` seconds that never cross a block edge."""
    edges = []
    t = 0.0
    while t < duration - 1e-9:
        block_end = (math.floor(t / block + 1e-9) + 1) * block
        t1 = min(t + dt, block_end, duration)
        edges.append((t, t1))
        t = t1
    return edges


def _merge(steps: list[RateStep]) -> tuple[RateStep, ...]:
    out: list[RateStep] = []
    for s in steps:
        if out and out[-1].rate == s.rate and out[-1].end == s.start:
            out[-1] = RateStep(out[-1].start, s.end, s.rate)
        else:
            out.append(s)
    return tuple(out)


__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario"]

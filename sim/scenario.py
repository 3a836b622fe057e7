"""Scenario files: one YAML file per planning question, checked at load like the server's config.

A bad file is refused with :class:`ScenarioError`, whose message names the
file, the line and the field (``monday.yaml:12: arrivals.surges.0.factor: ...``);
a bad CSV names the CSV file and its line. ``load_scenario`` returns the
:class:`sim.plan.Plan` the simulator runs. docs/sim.md is the reference.

The schema is in ``sim/scenario_schema.py``. The queue, tier and surge
settings are the server's own (``ivr.settings.queues``, which also turns them
into the engine's model): a scenario can name the server's config file and
plan with exactly the limits the server runs. ``sim`` reads ``ivr`` only
through ``ivr.settings`` (its configuration schema, not the router).

The module is long because :class:`_Compiler` is one pass over one scenario:
each section's checks need the sections compiled before it (the queues before
the teams, the teams before the roster), so they are kept in one class.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from ivr.settings.base import explain, line_of, read_yaml
from ivr.settings.config import ConfigError, load_config
from ivr.settings.queues import QueueSettings, SurgeSettings, queue_spec, surge_spec, tier_of
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
from sim.scenario_schema import DistSettings, Scenario, SurgeShape


class ScenarioError(Exception):
    """A scenario problem, worded for the planner who wrote the file."""


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
    """Check and compile the text of a scenario file; ``filename`` is what the error messages name."""
    node, data = read_yaml(text, filename, ScenarioError)
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

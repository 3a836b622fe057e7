"""The ``queues:``, ``agents:`` and ``surge:`` sections, and from them to the queueing model.

The section models come first (docs/queueing.md describes each setting).

``model_from_config`` turns the ``queues:``, ``agents:`` and ``surge:``
sections into the frozen ``queueing.model.Model`` the engine runs on.
``tier_of`` gives an arriving caller a tier and the urgent mark from the
caller groups their number is in. ``in_schedule`` says whether a wall-clock
time is inside a daily surge window: the engine's own schedule runs on the
engine clock, so the live server checks the daily windows and sends
``SurgeSwitch(cause="schedule")`` itself. The two ``*_for_runtime_update``
functions apply a JSON body from the admin API to a spec, refusing anything
they do not understand with a ``ValueError`` worded for the operator.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any, Protocol

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from ivr.settings.base import Problem, Strict, ends_after_start, raise_problems
from ivr.settings.values import DAYS, Day, Minutes, Name, SkillLevel
from queueing.model import (
    OVERFLOW_TARGETS,
    STRATEGIES,
    AgentSpec,
    Limit,
    Model,
    OverflowTarget,
    QueueSpec,
    Strategy,
    SurgeSpec,
    Tier,
)

_HA1_RE = re.compile(r"^[0-9a-fA-F]{32}$")


# ------------------------------------------------------------ the sections


class AgentSettings(Strict):
    """One agent's SIP login and what calls the agent can take. The password is stored only as its HA1."""

    ha1: str = Field(description="hex MD5 of 'name:realm:password' (`frontdesk hash-password NAME`)")
    display_name: str | None = None
    skills: dict[Name, SkillLevel] = Field(
        default_factory=dict, description="skill -> level; the agent takes a queue's calls when every level is met"
    )
    max_misses: int = Field(2, ge=1, le=100, description="unanswered rings in a row before the agent is not ready")

    @field_validator("ha1")
    @classmethod
    def _hex_md5(cls, v: str) -> str:
        if not _HA1_RE.match(v):
            raise ValueError("ha1 must be 32 hex digits: generate it with `frontdesk hash-password NAME`")
        return v.lower()


def _limit_shorthand(low: float, strict: bool, whole: bool, what: str) -> Callable[[Any], Any]:
    """A plain number means the same value in normal and surge mode; check it here for a one-line error."""

    def widen(v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not math.isfinite(v) or (v <= low if strict else v < low) or (whole and v != int(v)):
                bound = f"{'greater than' if strict else 'at least'} {low:g}"
                raise ValueError(f"{what} must be {f'a whole number ({bound})' if whole else bound}, got {v}")
            return {"normal": v, "surge": v}
        return v

    return widen


class WaitLimit(Strict):
    """Seconds, one value for normal mode and one for surge (R11)."""

    normal: float = Field(gt=0, allow_inf_nan=False, description="seconds in normal mode")
    surge: float = Field(gt=0, allow_inf_nan=False, description="seconds in surge mode")


class LengthLimit(Strict):
    """Callers waiting in line, one value for normal mode and one for surge (R11)."""

    normal: int = Field(ge=0, description="callers in normal mode")
    surge: int = Field(ge=0, description="callers in surge mode")


Wait = Annotated[WaitLimit, BeforeValidator(_limit_shorthand(0, True, False, "a wait in seconds"))]
Length = Annotated[LengthLimit, BeforeValidator(_limit_shorthand(0, False, True, "a queue length"))]


class TierSettings(Strict):
    """A customer tier (R16): higher priority is served first; callers in ``groups`` get this tier."""

    name: Name
    priority: int = Field(ge=0, le=1000, description="higher is served first")
    groups: list[Name] = Field(default_factory=list, description="caller groups (ivr.groups) that put a caller here")


def _default_tiers() -> list[TierSettings]:
    return [
        TierSettings(name="special", priority=3),
        TierSettings(name="senior", priority=2),
        TierSettings(name="ordinary", priority=1),
    ]


class ServiceLevelSettings(Strict):
    """The service-level objective: ``target`` of calls answered within ``seconds``."""

    seconds: float = Field(20.0, gt=0, le=3600, description="T of 'X % answered within T seconds'")
    target: float = Field(0.8, ge=0, le=1, description="the share aimed at, 0..1")


class QueueSettings(Strict):
    """One queue: who may take its calls, how they are chosen, and the limits (docs/queueing.md)."""

    skills: dict[Name, SkillLevel] = Field(default_factory=dict, description="skill -> minimum agent level")
    strategy: Strategy = Field("longest_idle", description="longest_idle | round_robin | fewest_calls | ring_all")
    tiers: list[TierSettings] = Field(default_factory=_default_tiers, min_length=1, description="R16")
    urgent_groups: list[Name] = Field(default_factory=list, description="caller groups never peak-shaved (R8)")
    announce_every: Wait = Field(
        WaitLimit(normal=30, surge=20), description="seconds between position/wait announcements"
    )
    max_wait: Wait = Field(WaitLimit(normal=60, surge=40), description="seconds in line before overflow (R11)")
    max_length: Length = Field(
        LengthLimit(normal=20, surge=10), description="callers in line beyond which the last overflow"
    )
    overflow: OverflowTarget = Field("message", description="where overflowing callers go in normal mode")
    surge_overflow: OverflowTarget = Field("callback", description="where they go in surge mode (R10)")
    callback_ewt: float | None = Field(
        None, gt=0, le=86400, description="R2: a caller whose estimated wait is longer is offered a callback at once"
    )
    ring_timeout: float = Field(12.0, gt=0, le=300, description="seconds an agent's phone rings before the next try")
    wrap_up: float = Field(10.0, ge=0, le=3600, description="seconds after a call before the agent is ready again")
    service_level: ServiceLevelSettings = ServiceLevelSettings()
    abandon_grace: float = Field(
        5.0, ge=0, le=300, description="abandons quicker than this are not held against the service level"
    )
    initial_aht: float = Field(
        180.0, gt=0, le=36000, description="handle time assumed before the first call ends, seconds"
    )

    @field_validator("tiers")
    @classmethod
    def _unique_tiers(cls, v: list[TierSettings]) -> list[TierSettings]:
        seen: set[str] = set()
        problems: list[Problem] = []
        for i, tier in enumerate(v):
            if tier.name in seen:
                problems.append(((i, "name"), f"tier {tier.name!r} is listed twice", tier.name))
            seen.add(tier.name)
        if problems:
            raise_problems("QueueSettings", problems)
        return v


def default_queues() -> dict[str, QueueSettings]:
    return {"general": QueueSettings()}


class SurgeWindow(Strict):
    """A daily surge window in the server's local time, [start, end)."""

    start: Minutes = Field(description='"HH:MM" (kept as minutes after midnight)')
    end: Minutes = Field(description='"HH:MM", after start; "24:00" is midnight at the end of the day')
    days: list[Day] | None = Field(None, min_length=1, description="mon..sun; default: every day")

    _after_start = field_validator("end")(ends_after_start("window"))


class SurgeSettings(Strict):
    """The surge switch: when it turns on by itself, and what it does (docs/queueing.md)."""

    auto: bool = Field(True, description="switch on and off by the thresholds below")
    ewt_on: float | None = Field(120.0, ge=0, allow_inf_nan=False, description="on when a queue's EWT reaches this")
    ewt_off: float | None = Field(
        45.0, ge=0, allow_inf_nan=False, description="off only when every EWT is back to this"
    )
    queue_length_on: int | None = Field(None, ge=1, description="on when a queue has this many callers waiting")
    queue_length_off: int | None = Field(None, ge=0, description="off only when every queue is back to this")
    service_level_on: float | None = Field(None, ge=0, le=1, description="on when the recent service level falls below")
    service_level_off: float | None = Field(None, ge=0, le=1, description="off only when it is back at or above")
    service_level_window: float = Field(300.0, gt=0, le=86400, description="seconds of calls the service level covers")
    min_dwell: float = Field(60.0, ge=0, le=86400, description="seconds the automatic switch stays put after a change")
    schedule: list[SurgeWindow] = Field(default_factory=list, description="daily surge windows, server local time")
    peak_shaving_ewt: float | None = Field(
        300.0,
        ge=0,
        allow_inf_nan=False,
        description="R8: in surge, shave callers whose EWT is above this; null = never",
    )
    notice: bool = Field(False, description="R6: in surge, play a notice to every caller joining a queue")
    pause_outbound: bool = Field(True, description="R15: in surge, pause outbound callbacks and marketing")

    @field_validator("ewt_off", "queue_length_off")
    @classmethod
    def _off_not_above_on(cls, v: float | None, info: ValidationInfo) -> float | None:
        on_name = info.field_name.removesuffix("_off") + "_on" if info.field_name else ""
        on = info.data.get(on_name)
        if v is not None and on is not None and v > on:
            raise ValueError(f"{info.field_name} ({v}) must not exceed {on_name} ({on}): the switch would flap")
        return v

    @field_validator("service_level_off")
    @classmethod
    def _off_not_below_on(cls, v: float | None, info: ValidationInfo) -> float | None:
        on = info.data.get("service_level_on")
        if v is not None and on is not None and v < on:
            raise ValueError(
                f"service_level_off ({v}) must not be below service_level_on ({on}): the switch would flap"
            )
        return v


class QueueSections(Protocol):
    """What :func:`model_from_config` reads of the config (``ivr.settings.config.Config`` has it)."""

    @property
    def queues(self) -> Mapping[str, QueueSettings]: ...

    @property
    def agents(self) -> Mapping[str, AgentSettings]: ...

    @property
    def surge(self) -> SurgeSettings: ...


# ------------------------------------------------------------ config -> model


def _wait(limit: WaitLimit) -> Limit:
    return Limit(limit.normal, limit.surge)


def _length(limit: LengthLimit) -> Limit:
    return Limit(limit.normal, limit.surge)


def queue_spec(name: str, q: QueueSettings) -> QueueSpec:
    """The engine's view of one configured queue."""
    return QueueSpec(
        name=name,
        skills=MappingProxyType(dict(q.skills)),
        strategy=q.strategy,
        tiers=tuple(Tier(t.name, t.priority) for t in q.tiers),
        announce_every=_wait(q.announce_every),
        max_wait=_wait(q.max_wait),
        max_length=_length(q.max_length),
        overflow=q.overflow,
        surge_overflow=q.surge_overflow,
        callback_ewt=q.callback_ewt,
        ring_timeout=q.ring_timeout,
        wrap_up=q.wrap_up,
        service_level_t=q.service_level.seconds,
        service_level_target=q.service_level.target,
        abandon_grace=q.abandon_grace,
        initial_aht=q.initial_aht,
    )


def surge_spec(s: SurgeSettings) -> SurgeSpec:
    """The engine's view of the ``surge:`` section. Daily windows stay out: see :func:`in_schedule`."""
    return SurgeSpec(
        auto=s.auto,
        ewt_on=s.ewt_on,
        ewt_off=s.ewt_off,
        queue_length_on=s.queue_length_on,
        queue_length_off=s.queue_length_off,
        service_level_on=s.service_level_on,
        service_level_off=s.service_level_off,
        service_level_window=s.service_level_window,
        min_dwell=s.min_dwell,
        peak_shaving_ewt=s.peak_shaving_ewt,
        notice=s.notice,
        pause_outbound=s.pause_outbound,
    )


def model_from_config(config: QueueSections) -> Model:
    """Queues, agents (the ``agents:`` logins with their skills) and surge policy as a queueing model."""
    return Model(
        queues=tuple(queue_spec(name, q) for name, q in config.queues.items()),
        agents=tuple(
            AgentSpec(id=name, skills=MappingProxyType(dict(a.skills)), max_misses=a.max_misses)
            for name, a in config.agents.items()
        ),
        surge=surge_spec(config.surge),
    )


def in_schedule(surge: SurgeSettings, local: datetime) -> bool:
    """True if the wall time ``local`` (server local time) is inside a daily surge window [start, end)."""
    day = DAYS[local.weekday()]
    minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    return any(w.start <= minute < w.end and (w.days is None or day in w.days) for w in surge.schedule)


def tier_of(queue: QueueSettings, groups: frozenset[str]) -> tuple[str, bool]:
    """(tier, urgent) of a caller in ``groups`` joining ``queue``.

    The tier is the highest-priority tier that lists one of the caller's
    groups (the first listed on a tie); a caller in none of them gets the
    lowest-priority tier (again the first listed on a tie).
    """
    urgent = not groups.isdisjoint(queue.urgent_groups)
    matching = [t for t in queue.tiers if not groups.isdisjoint(t.groups)]
    if matching:
        top = max(t.priority for t in matching)
        return next(t.name for t in matching if t.priority == top), urgent
    low = min(t.priority for t in queue.tiers)
    return next(t.name for t in queue.tiers if t.priority == low), urgent


# ------------------------------------------------------------ runtime updates


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{key}: expected a number, got {v!r}")
    return float(v)


def _seconds(key: str, v: Any, *, zero_ok: bool = False) -> float:
    x = _number(key, v)
    if x < 0 or (x == 0 and not zero_ok):
        raise ValueError(f"{key}: must be {'at least 0' if zero_ok else 'more than 0'} seconds, got {v!r}")
    return x


def _count(key: str, v: Any, *, low: int = 0) -> int:
    x = _number(key, v)
    if x != int(x) or x < low:
        raise ValueError(f"{key}: expected a whole number of at least {low}, got {v!r}")
    return int(x)


def _ratio(key: str, v: Any) -> float:
    x = _number(key, v)
    if not 0 <= x <= 1:
        raise ValueError(f"{key}: expected a ratio from 0 to 1, got {v!r}")
    return x


def _flag(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{key}: expected true or false, got {v!r}")
    return v


def _choice(key: str, v: Any, allowed: tuple[str, ...]) -> Any:
    if v not in allowed:
        raise ValueError(f"{key}: expected one of {', '.join(allowed)}, got {v!r}")
    return v


def _limit(key: str, v: Any, current: Limit, parse: Any) -> Limit:
    """A number (both modes) or {"normal": x, "surge": y}; a mode left out keeps its value."""
    if isinstance(v, Mapping):
        unknown = sorted(set(v) - {"normal", "surge"})
        if unknown:
            raise ValueError(f"{key}: unknown key {unknown[0]!r}: use normal and surge")
        normal = parse(f"{key}.normal", v["normal"]) if "normal" in v else current.normal
        surge = parse(f"{key}.surge", v["surge"]) if "surge" in v else current.surge
        return Limit(normal, surge)
    x = parse(key, v)
    return Limit(x, x)


def _check_keys(what: str, changes: Any, known: tuple[str, ...]) -> None:
    if not isinstance(changes, Mapping):
        raise ValueError(f"{what}: expected a JSON object of settings, got {type(changes).__name__}")
    for key in changes:
        if key not in known:
            raise ValueError(f"{what}: unknown setting {key!r}: use {', '.join(known)}")


QUEUE_RUNTIME_KEYS = (
    "max_wait",
    "max_length",
    "announce_every",
    "ring_timeout",
    "wrap_up",
    "overflow",
    "surge_overflow",
    "strategy",
    "service_level_target",
    "callback_ewt",
)


def queue_for_runtime_update(spec: QueueSpec, changes: dict[str, Any]) -> QueueSpec:
    """``spec`` with the admin API's ``changes`` applied; ValueError (incl. ModelError) names the bad setting."""
    _check_keys(f"queue {spec.name}", changes, QUEUE_RUNTIME_KEYS)
    new: dict[str, Any] = {}
    for key, v in changes.items():
        if key in ("max_wait", "announce_every"):
            new[key] = _limit(key, v, getattr(spec, key), _seconds)
        elif key == "max_length":
            new[key] = _limit(key, v, spec.max_length, _count)
        elif key == "ring_timeout":
            new[key] = _seconds(key, v)
        elif key == "wrap_up":
            new[key] = _seconds(key, v, zero_ok=True)
        elif key in ("overflow", "surge_overflow"):
            new[key] = _choice(key, v, OVERFLOW_TARGETS)
        elif key == "strategy":
            new[key] = _choice(key, v, STRATEGIES)
        elif key == "callback_ewt":
            new[key] = None if v is None else _seconds(key, v)
        else:  # service_level_target
            new[key] = _ratio(key, v)
    return dataclasses.replace(spec, **new)


SURGE_RUNTIME_KEYS = (
    "ewt_on",
    "ewt_off",
    "queue_length_on",
    "queue_length_off",
    "service_level_on",
    "service_level_off",
    "min_dwell",
    "peak_shaving_ewt",
    "auto",
    "notice",
    "pause_outbound",
)


def surge_for_runtime_update(spec: SurgeSpec, changes: dict[str, Any]) -> SurgeSpec:
    """``spec`` with the admin API's ``changes`` applied; thresholds may be null (not used)."""
    _check_keys("surge", changes, SURGE_RUNTIME_KEYS)
    new: dict[str, Any] = {}
    for key, v in changes.items():
        if key in ("auto", "notice", "pause_outbound"):
            new[key] = _flag(key, v)
        elif key == "min_dwell":
            new[key] = _seconds(key, v, zero_ok=True)
        elif v is None:
            new[key] = None
        elif key in ("ewt_on", "ewt_off", "peak_shaving_ewt"):
            new[key] = _seconds(key, v, zero_ok=True)
        elif key == "queue_length_on":
            new[key] = _count(key, v, low=1)
        elif key == "queue_length_off":
            new[key] = _count(key, v)
        else:  # service_level_on / _off
            new[key] = _ratio(key, v)
    return dataclasses.replace(spec, **new)

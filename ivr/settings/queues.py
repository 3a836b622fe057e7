"""From the config file to the queueing model, and the small decisions around it.

``model_from_config`` turns the ``queues:``, ``agents:`` and ``surge:``
sections into the frozen ``queueing.model.Model`` the engine runs on.
``tier_of`` gives an arriving caller a tier and the urgent mark from the
caller groups their number is in. ``in_schedule`` says whether a wall-clock
time is inside a daily surge window: the engine's own schedule runs on the
engine clock, so the live router checks the daily windows and sends
``SurgeSwitch(cause="schedule")`` itself. The two ``*_for_runtime_update``
functions apply a JSON body from the admin API to a spec, refusing anything
they do not understand with a ``ValueError`` worded for the operator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, get_args

from ivr.flow.config import DAYS
from ivr.settings.config import Config, LengthLimit, QueueSettings, SurgeSettings, WaitLimit
from queueing.events import OverflowTarget
from queueing.model import STRATEGIES, AgentSpec, Limit, Model, QueueSpec, SurgeSpec, Tier

OVERFLOW_TARGETS: tuple[OverflowTarget, ...] = get_args(OverflowTarget)


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


def model_from_config(config: Config) -> Model:
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

"""The call-center model as data: queues, tiers, agents, surge policy.

Like a Ciw network, a model is plain frozen data; the engine interprets it.
All times are seconds. Values that differ in a surge are a ``Limit`` with a
``normal`` and a ``surge`` value (R11).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from queueing.pickling import reduce_fields

# Where a caller goes when they leave the line before an agent (a queue's ``overflow`` setting, R10).
OverflowTarget = Literal["callback", "message", "self_service", "peak_shaving"]
OVERFLOW_TARGETS: tuple[OverflowTarget, ...] = get_args(OverflowTarget)
Strategy = Literal["longest_idle", "round_robin", "fewest_calls", "ring_all"]
STRATEGIES: tuple[Strategy, ...] = ("longest_idle", "round_robin", "fewest_calls", "ring_all")


class ModelError(ValueError):
    """The model (configuration) is inconsistent."""


@dataclass(frozen=True, slots=True)
class Limit:
    normal: float
    surge: float

    def value(self, surge: bool) -> float:
        return self.surge if surge else self.normal

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)


@dataclass(frozen=True, slots=True)
class Tier:
    """A customer tier (R16). Higher ``priority`` is served first."""

    name: str
    priority: int

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)


DEFAULT_TIERS: tuple[Tier, ...] = (Tier("special", 3), Tier("senior", 2), Tier("ordinary", 1))


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    # skill -> minimum level an agent needs to take this queue's calls
    skills: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    strategy: Strategy = "longest_idle"
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    # R11: "2 x 30 s" normally, "2 x 20 s" in surge: two announcement periods, then overflow
    announce_every: Limit = Limit(30.0, 20.0)
    max_wait: Limit = Limit(60.0, 40.0)
    max_length: Limit = Limit(20, 10)
    overflow: OverflowTarget = "message"
    surge_overflow: OverflowTarget = "callback"  # R10: callback booking switched on at peak
    # R2: a caller whose wait would be longer than this is offered a callback at once (None: never)
    callback_ewt: float | None = None
    ring_timeout: float = 12.0
    wrap_up: float = 10.0
    service_level_t: float = 20.0  # T of "X % answered within T seconds"
    service_level_target: float = 0.8
    abandon_grace: float = 5.0  # abandons this quick are left out of service level
    initial_aht: float = 180.0  # handle time assumed before any call was handled
    aht_alpha: float = 0.2  # weight of the newest handle time in the moving average

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ModelError(f"queue {self.name}: unknown strategy {self.strategy!r}")
        if not self.tiers:
            raise ModelError(f"queue {self.name}: needs at least one tier")
        if len({t.name for t in self.tiers}) != len(self.tiers):
            raise ModelError(f"queue {self.name}: duplicate tier names")
        if not 0 < self.aht_alpha <= 1:
            raise ModelError(f"queue {self.name}: aht_alpha must be in (0, 1]")
        for limit in (self.max_wait, self.announce_every):
            if limit.normal <= 0 or limit.surge <= 0:
                raise ModelError(f"queue {self.name}: waits must be positive")
        if self.max_length.normal < 0 or self.max_length.surge < 0:
            raise ModelError(f"queue {self.name}: max_length must be >= 0")
        if self.callback_ewt is not None and self.callback_ewt <= 0:
            raise ModelError(f"queue {self.name}: callback_ewt must be positive")
        if self.ring_timeout <= 0 or self.wrap_up < 0:
            raise ModelError(f"queue {self.name}: ring_timeout > 0 and wrap_up >= 0 required")

    def tier_priority(self, tier: str) -> int:
        """Priority of ``tier``; a tier the queue does not know is served as its lowest."""
        for t in self.tiers:
            if t.name == tier:
                return t.priority
        return min(t.priority for t in self.tiers)

    @property
    def top_priority(self) -> int:
        return max(t.priority for t in self.tiers)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    id: str
    skills: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # skill -> level
    max_misses: int = 2  # ring-no-answers in a row before the agent goes not-ready "no answer"

    def can_take(self, required: Mapping[str, int]) -> bool:
        return all(self.skills.get(skill, 0) >= level for skill, level in required.items())

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)


@dataclass(frozen=True, slots=True)
class SurgeSpec:
    """When surge mode turns on and off by itself, and what it does.

    Automatic switching uses hysteresis: it turns on when ANY ``*_on``
    threshold is crossed and off only when EVERY ``*_off`` level is back, and
    never changes again before ``min_dwell`` seconds have passed.
    A threshold of None is not used.
    """

    auto: bool = True
    ewt_on: float | None = 120.0
    ewt_off: float | None = 45.0
    queue_length_on: int | None = None
    queue_length_off: int | None = None
    service_level_on: float | None = None  # on when the windowed service level falls below
    service_level_off: float | None = None  # off only when it is back at or above
    service_level_window: float = 300.0
    service_level_min_samples: int = 10
    min_dwell: float = 60.0
    # scheduled surge windows [start, end) on the engine's clock
    schedule: tuple[tuple[float, float], ...] = ()
    # R8: peak shaving only when the caller's EWT is above this; None = never
    peak_shaving_ewt: float | None = 300.0
    notice: bool = False  # R6: play a notice to arriving callers while in surge
    pause_outbound: bool = True  # R15

    def __post_init__(self) -> None:
        if self.ewt_on is not None and self.ewt_off is not None and self.ewt_off > self.ewt_on:
            raise ModelError("surge: ewt_off must not exceed ewt_on")
        if (
            self.queue_length_on is not None
            and self.queue_length_off is not None
            and self.queue_length_off > self.queue_length_on
        ):
            raise ModelError("surge: queue_length_off must not exceed queue_length_on")
        if (
            self.service_level_on is not None
            and self.service_level_off is not None
            and self.service_level_off < self.service_level_on
        ):
            raise ModelError("surge: service_level_off must not be below service_level_on")
        if self.min_dwell < 0:
            raise ModelError("surge: min_dwell must be >= 0")
        for start, end in self.schedule:
            if end <= start:
                raise ModelError("surge: schedule windows need start < end")

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)


@dataclass(frozen=True, slots=True)
class Model:
    queues: tuple[QueueSpec, ...]
    agents: tuple[AgentSpec, ...]
    surge: SurgeSpec = SurgeSpec()

    def __post_init__(self) -> None:
        if len({q.name for q in self.queues}) != len(self.queues):
            raise ModelError("duplicate queue names")
        if len({a.id for a in self.agents}) != len(self.agents):
            raise ModelError("duplicate agent ids")

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)

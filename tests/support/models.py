"""The engine's property-test model, shared by the engine's stateful test and the cluster coordinator's.

Two queues (one with a skill and ring-all), four agents with skill levels and
one who goes not ready after a single miss, automatic surge with hysteresis:
small enough for hypothesis to reach every state, rich enough to use every rule.
"""

from __future__ import annotations

from types import MappingProxyType

from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec


def skills(**levels: int) -> MappingProxyType[str, int]:
    return MappingProxyType(dict(levels))


STATEFUL_MODEL = Model(
    queues=(
        QueueSpec("sales", strategy="longest_idle", max_length=Limit(4, 2), ring_timeout=8.0, wrap_up=3.0),
        QueueSpec(
            "billing",
            skills=skills(billing=1),
            strategy="ring_all",
            max_length=Limit(3, 2),
            ring_timeout=6.0,
            overflow="peak_shaving",
        ),
    ),
    agents=(
        AgentSpec("a1"),
        AgentSpec("a2", skills=skills(billing=1)),
        AgentSpec("a3", skills=skills(billing=2), max_misses=1),
        AgentSpec("a4", skills=skills(fr=1)),
    ),
    surge=SurgeSpec(auto=True, ewt_on=200.0, ewt_off=60.0, queue_length_on=3, queue_length_off=1, min_dwell=20.0),
)

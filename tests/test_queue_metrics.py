"""ivr.web.metrics.QueueCollector: a real queueing Engine fed scripted events, scraped through a fresh registry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ivr.web.metrics import QueueCollector
from queueing.engine import Engine
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentNoAnswer,
    AgentReady,
    CallArrived,
    CallEnded,
    CallerHungUp,
    Overflow,
    SurgeSwitch,
)
from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

TARGETS = ("callback", "message", "self_service", "peak_shaving")
STATES = ("logged_out", "ready", "ringing", "talking", "wrap_up", "not_ready")


def scrape(engine: Engine, paused: bool = False) -> tuple[str, Samples]:
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: engine, lambda: paused))
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def q(name: str, queue: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"queue": queue, **labels}.items()))


def engine() -> Engine:
    model = Model(
        queues=(
            QueueSpec("general", initial_aht=100.0, wrap_up=5.0, max_length=Limit(2, 1)),
            QueueSpec("billing", skills=MappingProxyType({"billing": 1})),
        ),
        agents=(AgentSpec("a1"), AgentSpec("a2", skills=MappingProxyType({"billing": 1}))),
        surge=SurgeSpec(auto=False),
    )
    return Engine(model)


def test_a_fresh_engine_exposes_every_label_with_zero() -> None:
    text, samples = scrape(engine())
    for queue in ("general", "billing"):
        for target in TARGETS:
            assert samples[q("frontdesk_queue_calls_overflowed_total", queue, target=target)] == 0
        assert samples[q("frontdesk_queue_calls_offered_total", queue)] == 0
        assert samples[q("frontdesk_queue_service_level_ratio", queue)] == 1.0  # nothing decided yet
        assert samples[q("frontdesk_queue_ewt_seconds", queue)] == math.inf  # nobody logged in
    for state in STATES:
        assert samples[("frontdesk_agents", (("state", state),))] == (2 if state == "logged_out" else 0)
    for cause in ("manual", "schedule", "auto"):
        assert samples[("frontdesk_surge_changes_total", (("cause", cause),))] == 0
    assert samples[("frontdesk_surge_active", ())] == 0
    assert samples[("frontdesk_outbound_paused", ())] == 0
    assert 'frontdesk_queue_ewt_seconds{queue="general"} +Inf' in text


def test_scripted_calls_give_exact_values() -> None:
    e = engine()
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    e.handle(CallArrived(call_id="c1", queue="general", tier="ordinary", now=1.0))  # rings a1, EWT 0
    e.handle(AgentNoAnswer(agent="a1", call="c1", now=3.0))  # one miss: a1 stays ready and is rung again
    e.handle(AgentAnswered(agent="a1", call="c1", now=5.0))  # waited 4 s
    e.handle(CallArrived(call_id="c2", queue="general", tier="ordinary", now=6.0))  # EWT 1 * 100 / 1
    e.handle(CallArrived(call_id="c3", queue="general", tier="special", now=8.0))  # ahead of c2, EWT 100
    out = e.handle(CallArrived(call_id="c4", queue="general", tier="ordinary", now=9.0))
    assert Overflow("c4", "message", "max_length") in out  # 3 in line, 2 allowed: the back leaves
    e.handle(CallArrived(call_id="c5", queue="billing", tier="ordinary", now=10.0))  # nobody serves: EWT +Inf
    e.handle(CallerHungUp(call="c5", now=12.0))  # 2 s: a short abandon
    e.handle(CallEnded(call="c1", now=30.0))  # wrap-up until 35
    e.handle(AgentReady(agent="a1", now=33.0))  # cut short: handle time 28 s, AHT 0.2 * 28 + 0.8 * 100
    e.handle(AgentAnswered(agent="a1", call="c3", now=34.0))  # waited 26 s > T = 20, predicted 100
    e.handle(SurgeSwitch(on=True, cause="manual", now=34.5))

    _, samples = scrape(e, paused=True)
    aht = 0.2 * 28 + 0.8 * 100
    general = {
        "frontdesk_queue_calls_offered_total": 4,
        "frontdesk_queue_calls_answered_total": 2,
        "frontdesk_queue_calls_abandoned_total": 0,
        "frontdesk_queue_ring_no_answer_total": 1,
        "frontdesk_queue_answered_within_threshold_total": 1,
        "frontdesk_queue_abandoned_short_total": 0,
        "frontdesk_queue_waiting_calls": 1,  # c2
        "frontdesk_queue_ringing_calls": 0,
        "frontdesk_queue_longest_wait_seconds": 34.5 - 6.0,
        "frontdesk_queue_ewt_seconds": 2 * aht / 1,  # a new caller would be second behind c2, a1 serving
        "frontdesk_queue_aht_seconds": aht,
        "frontdesk_queue_service_level_ratio": 1 / (2 + 0 + 1 - 0),
        "frontdesk_queue_service_level_threshold_seconds": 20.0,
        "frontdesk_queue_service_level_target_ratio": 0.8,
        "frontdesk_queue_asa_seconds": (4 + 26) / 2,
        "frontdesk_queue_agents_serving": 1,
        "frontdesk_queue_answer_wait_seconds_count": 2,
        "frontdesk_queue_answer_wait_seconds_sum": 30.0,
        "frontdesk_queue_ewt_error_seconds_count": 2,
        "frontdesk_queue_ewt_error_seconds_sum": (4 - 0) + (26 - 100),
        "frontdesk_queue_ewt_abs_error_seconds_count": 2,
        "frontdesk_queue_ewt_abs_error_seconds_sum": 4 + 74,
    }
    for name, value in general.items():
        assert samples[q(name, "general")] == pytest.approx(value), name
    billing = {
        "frontdesk_queue_calls_offered_total": 1,
        "frontdesk_queue_calls_abandoned_total": 1,
        "frontdesk_queue_abandoned_short_total": 1,
        "frontdesk_queue_service_level_ratio": 1.0,  # the only call was a short abandon: nothing decided
        "frontdesk_queue_ewt_seconds": math.inf,
        "frontdesk_queue_aht_seconds": 180.0,
        "frontdesk_queue_asa_seconds": 0.0,
        "frontdesk_queue_agents_serving": 0,
        "frontdesk_queue_ewt_error_seconds_count": 0,  # an infinite prediction is no sample
    }
    for name, value in billing.items():
        assert samples[q(name, "billing")] == value, name
    assert {t: samples[q("frontdesk_queue_calls_overflowed_total", "general", target=t)] for t in TARGETS} == {
        "callback": 0,
        "message": 1,
        "self_service": 0,
        "peak_shaving": 0,
    }
    assert {s: samples[("frontdesk_agents", (("state", s),))] for s in STATES} == {
        "logged_out": 1,
        "ready": 0,
        "ringing": 0,
        "talking": 1,
        "wrap_up": 0,
        "not_ready": 0,
    }
    assert samples[("frontdesk_surge_active", ())] == 1
    assert samples[("frontdesk_surge_changes_total", (("cause", "manual"),))] == 1
    assert samples[("frontdesk_surge_changes_total", (("cause", "auto"),))] == 0
    assert samples[("frontdesk_outbound_paused", ())] == 1


def test_exposition_names_and_types() -> None:
    text, _ = scrape(engine())
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert types == {
        "frontdesk_queue_calls_offered_total": "counter",
        "frontdesk_queue_calls_answered_total": "counter",
        "frontdesk_queue_calls_abandoned_total": "counter",
        "frontdesk_queue_ring_no_answer_total": "counter",
        "frontdesk_queue_answered_within_threshold_total": "counter",
        "frontdesk_queue_abandoned_short_total": "counter",
        "frontdesk_queue_calls_overflowed_total": "counter",
        "frontdesk_queue_waiting_calls": "gauge",
        "frontdesk_queue_ringing_calls": "gauge",
        "frontdesk_queue_longest_wait_seconds": "gauge",
        "frontdesk_queue_ewt_seconds": "gauge",
        "frontdesk_queue_aht_seconds": "gauge",
        "frontdesk_queue_service_level_ratio": "gauge",
        "frontdesk_queue_service_level_threshold_seconds": "gauge",
        "frontdesk_queue_service_level_target_ratio": "gauge",
        "frontdesk_queue_asa_seconds": "gauge",
        "frontdesk_queue_agents_serving": "gauge",
        "frontdesk_queue_answer_wait_seconds": "summary",
        "frontdesk_queue_ewt_error_seconds": "summary",
        "frontdesk_queue_ewt_abs_error_seconds": "summary",
        "frontdesk_agents": "gauge",
        "frontdesk_surge_active": "gauge",
        "frontdesk_surge_changes_total": "counter",
        "frontdesk_outbound_paused": "gauge",
    }


def test_the_engine_is_looked_up_on_every_scrape() -> None:
    engines = [engine()]
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: engines[-1], lambda: False))
    engines[0].handle(CallArrived(call_id="c1", queue="general", tier="ordinary", now=0.0))
    assert 'frontdesk_queue_calls_offered_total{queue="general"} 1.0' in generate_latest(registry).decode()
    engines.append(engine())  # e.g. a reload
    assert 'frontdesk_queue_calls_offered_total{queue="general"} 0.0' in generate_latest(registry).decode()


def test_the_router_counts_of_calls_to_agents_are_exported_when_given() -> None:
    @dataclass
    class Counts:
        agent_calls: dict[str, int] = field(default_factory=dict)
        unreachable: int = 0

    counts = Counts({"answered": 3, "failed_4xx": 1}, unreachable=2)
    registry = CollectorRegistry()
    registry.register(QueueCollector(engine, lambda: False, counts))
    text = generate_latest(registry).decode()
    assert 'frontdesk_queue_agent_calls_total{result="answered"} 3.0' in text
    assert 'frontdesk_queue_agent_calls_total{result="failed_4xx"} 1.0' in text
    assert "frontdesk_queue_agent_unreachable_total 2.0" in text
    assert "frontdesk_queue_agent_calls" not in scrape(engine())[0]  # not given: not exported

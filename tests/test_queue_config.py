"""The queues:, surge: and agents: sections, and ivr.settings.queues (config -> queueing model, tiers, updates)."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from ivr.settings.config import Config, ConfigError, load_config, parse_config
from ivr.settings.queues import (
    in_schedule,
    model_from_config,
    queue_for_runtime_update,
    surge_for_runtime_update,
    tier_of,
)
from queueing.model import AgentSpec, Limit, Model, ModelError, QueueSpec, SurgeSpec, Tier

ROOT = Path(__file__).resolve().parent.parent
HA1 = "0123456789abcdef0123456789abcdef"

FULL = f"""\
ivr:
  groups:
    vip: {{numbers: ["5550001"]}}
    seniors: {{prefixes: ["5559"]}}
    emergency: {{numbers: ["5550112"]}}
agents:
  '1001': {{ha1: {HA1}, skills: {{general: 1, billing: 2}}, max_misses: 3}}
  bob: {{ha1: {HA1}}}
queues:
  general:
    skills: {{general: 1}}
    strategy: round_robin
    tiers:
      - {{name: special, priority: 3, groups: [vip]}}
      - {{name: senior, priority: 2, groups: [seniors]}}
      - {{name: ordinary, priority: 1}}
    urgent_groups: [emergency]
    announce_every: {{normal: 30, surge: 20}}
    max_wait: 90
    max_length: {{normal: 20, surge: 10}}
    overflow: self_service
    surge_overflow: callback
    ring_timeout: 15
    wrap_up: 0
    service_level: {{seconds: 30, target: 0.9}}
    abandon_grace: 3
    initial_aht: 240
  billing:
    skills: {{billing: 2}}
    strategy: ring_all
surge:
  auto: false
  ewt_on: 200
  ewt_off: 200
  queue_length_on: 30
  queue_length_off: 10
  service_level_on: 0.6
  service_level_off: 0.75
  service_level_window: 600
  min_dwell: 120
  schedule:
    - {{start: "08:00", end: "09:30", days: [mon, tue, wed, thu, fri]}}
    - start: 17:30
      end: "24:00"
  peak_shaving_ewt: null
  notice: true
  pause_outbound: false
"""


def error_of(text: str, filename: str = "cfg.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename)
    return str(info.value)


# ------------------------------------------------------------------ defaults


def test_default_config_has_one_general_queue_and_the_model_defaults() -> None:
    cfg = Config()
    assert list(cfg.queues) == ["general"]
    assert model_from_config(cfg) == Model(queues=(QueueSpec("general"),), agents=(), surge=SurgeSpec())
    assert parse_config("", "cfg.yaml") == cfg


def test_the_demo_flow_queue_exists_by_default() -> None:
    cfg = Config()
    queues = {
        node.queue
        for flow in cfg.ivr.flows.values()
        for node in flow.nodes.values()
        if getattr(node, "type", None) == "queue"
    }
    assert queues == {"general"}
    assert queues <= set(cfg.queues)


def test_example_file_shows_the_defaults() -> None:
    cfg = load_config(ROOT / "examples" / "frontdesk.yaml")
    assert cfg.queues == Config().queues
    assert cfg.surge == Config().surge


# ------------------------------------------------------------------ full file


def test_every_setting_reaches_the_model() -> None:
    cfg = parse_config(FULL, "cfg.yaml")
    model = model_from_config(cfg)
    general, billing = model.queues
    assert general == QueueSpec(
        name="general",
        skills=MappingProxyType({"general": 1}),
        strategy="round_robin",
        tiers=(Tier("special", 3), Tier("senior", 2), Tier("ordinary", 1)),
        announce_every=Limit(30.0, 20.0),
        max_wait=Limit(90.0, 90.0),
        max_length=Limit(20, 10),
        overflow="self_service",
        surge_overflow="callback",
        ring_timeout=15.0,
        wrap_up=0.0,
        service_level_t=30.0,
        service_level_target=0.9,
        abandon_grace=3.0,
        initial_aht=240.0,
    )
    assert billing == QueueSpec(name="billing", skills=MappingProxyType({"billing": 2}), strategy="ring_all")
    assert model.agents == (
        AgentSpec("1001", MappingProxyType({"general": 1, "billing": 2}), max_misses=3),
        AgentSpec("bob", MappingProxyType({}), max_misses=2),
    )
    assert model.surge == SurgeSpec(
        auto=False,
        ewt_on=200.0,
        ewt_off=200.0,
        queue_length_on=30,
        queue_length_off=10,
        service_level_on=0.6,
        service_level_off=0.75,
        service_level_window=600.0,
        min_dwell=120.0,
        schedule=(),  # daily windows are the live server's: in_schedule
        peak_shaving_ewt=None,
        notice=True,
        pause_outbound=False,
    )
    # a skill-less agent takes only queues that need no skill
    assert model.agents[0].can_take(general.skills) and model.agents[0].can_take(billing.skills)
    assert not model.agents[1].can_take(general.skills)


def test_schedule_times_are_minutes_after_midnight_quoted_or_not() -> None:
    windows = parse_config(FULL, "cfg.yaml").surge.schedule
    assert [(w.start, w.end, w.days) for w in windows] == [
        (480, 570, ["mon", "tue", "wed", "thu", "fri"]),
        (1050, 1440, None),  # unquoted 17:30 is YAML's base-60 integer 1050
    ]


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (datetime(2024, 6, 3, 7, 59, 59), False),  # a Monday
        (datetime(2024, 6, 3, 8, 0), True),
        (datetime(2024, 6, 3, 9, 29, 59), True),
        (datetime(2024, 6, 3, 9, 30), False),  # end is exclusive
        (datetime(2024, 6, 8, 8, 30), False),  # Saturday: not in the weekday window
        (datetime(2024, 6, 8, 17, 30), True),  # the evening window runs every day
        (datetime(2024, 6, 9, 23, 59, 59, 999999), True),
        (datetime(2024, 6, 9, 0, 0), False),
    ],
)
def test_in_schedule(when: datetime, inside: bool) -> None:
    assert in_schedule(parse_config(FULL, "cfg.yaml").surge, when) is inside


def test_no_schedule_is_never_in_schedule() -> None:
    assert not in_schedule(Config().surge, datetime(2024, 6, 3, 8, 30))


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (frozenset(), ("ordinary", False)),
        (frozenset({"vip"}), ("special", False)),
        (frozenset({"seniors"}), ("senior", False)),
        (frozenset({"seniors", "vip"}), ("special", False)),  # the highest tier wins
        (frozenset({"emergency"}), ("ordinary", True)),
        (frozenset({"emergency", "seniors", "unrelated"}), ("senior", True)),
    ],
)
def test_tier_of(groups: frozenset[str], expected: tuple[str, bool]) -> None:
    queue = parse_config(FULL, "cfg.yaml").queues["general"]
    assert tier_of(queue, groups) == expected


def test_tier_of_takes_the_lowest_tier_wherever_it_is_listed() -> None:
    text = "queues:\n  general: {}\n  q:\n    tiers:\n      - {name: low, priority: 0}\n"
    text += "      - {name: high, priority: 5}\n"
    queue = parse_config(text, "cfg.yaml").queues["q"]
    assert tier_of(queue, frozenset({"x"})) == ("low", False)


def test_a_plain_number_sets_both_modes() -> None:
    cfg = parse_config("queues:\n  general:\n    announce_every: 25\n    max_length: 0\n", "cfg.yaml")
    (spec,) = model_from_config(cfg).queues
    assert spec.announce_every == Limit(25.0, 25.0)
    assert spec.max_length == Limit(0, 0)


# ------------------------------------------------------------------ errors


def test_callback_nodes_need_their_queue_and_slot() -> None:
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: callbacks: the built-in demo flow offers the slot 'morning'"):
        parse_config('callbacks:\n  windows: [{name: evening, start: "18:00", end: "20:00"}]\n', "cfg.yaml")
    text = (
        "ivr:\n  prompts: {m: {text: m}}\n  flows:\n    f:\n      start: b\n      nodes:\n"
        "        b: {type: callback, queue: sales, slot: night}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert str(info.value).splitlines() == [
        "cfg.yaml:7: ivr.flows.f.nodes.b.slot: unknown callback slot 'night': asap or a window of callbacks.windows",
        "cfg.yaml:7: ivr.flows.f.nodes.b.queue: unknown queue 'sales': define it under queues (queues now: general)",
    ]


def test_the_demo_flow_needs_its_queue() -> None:
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: queues: the built-in demo flow sends callers to queue 'gen"):
        parse_config("queues:\n  sales: {}\n", "cfg.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "queues:\n  general:\n    ring_timeout: 0\n",
            "cfg.yaml:3: queues.general.ring_timeout: Input should be greater than 0",
        ),
        (
            "queues:\n  general:\n    max_wait: -5\n",
            "cfg.yaml:3: queues.general.max_wait: a wait in seconds must be greater than 0, got -5",
        ),
        (
            "queues:\n  general:\n    max_wait:\n      normal: 60\n      surge: 0\n",
            "cfg.yaml:5: queues.general.max_wait.surge: Input should be greater than 0",
        ),
        (
            "queues:\n  general:\n    max_length: 2.5\n",
            "cfg.yaml:3: queues.general.max_length: a queue length must be a whole number (at least 0), got 2.5",
        ),
        (
            "queues:\n  general:\n    max_wait: {normal: 60, surge: 40, peak: 20}\n",
            "cfg.yaml:3: queues.general.max_wait.peak: unknown setting",
        ),
        (
            "queues:\n  general:\n    strategy: random\n",
            "cfg.yaml:3: queues.general.strategy: Input should be 'longest_idle', 'round_robin', 'fewest_calls' "
            "or 'ring_all'",
        ),
        (
            "queues:\n  general:\n    surge_overflow: voicemail\n",
            "cfg.yaml:3: queues.general.surge_overflow: Input should be 'callback', 'message', 'self_service' "
            "or 'peak_shaving'",
        ),
        (
            "queues:\n  general:\n    tiers:\n      - {name: a, priority: 2}\n      - {name: a, priority: 1}\n",
            "cfg.yaml:5: queues.general.tiers.1.name: tier 'a' is listed twice",
        ),
        ("queues:\n  general:\n    tiers: []\n", "cfg.yaml:3: queues.general.tiers: List should have at least 1 item"),
        (
            "queues:\n  general:\n    tiers:\n      - {name: vip, priority: 2, groups: [fault_aera]}\n",
            "cfg.yaml:4: queues.general.tiers.0.groups.0: unknown caller group 'fault_aera' "
            "(did you mean 'fault_area'?): define it under ivr.groups",
        ),
        (
            "queues:\n  general:\n    urgent_groups:\n      - fault_area\n      - nobody\n",
            "cfg.yaml:5: queues.general.urgent_groups.1: unknown caller group 'nobody': define it under ivr.groups",
        ),
        (
            "queues:\n  general:\n    service_level: {seconds: 20, target: 80}\n",
            "cfg.yaml:3: queues.general.service_level.target: Input should be less than or equal to 1",
        ),
        ("queues:\n  general:\n    skils: {a: 1}\n", "cfg.yaml:3: queues.general.skils: unknown setting"),
        ("queues: {}\n", "cfg.yaml:1: queues: Dictionary should have at least 1 item"),
        (
            "surge:\n  ewt_on: 30\n  ewt_off: 60\n",
            "cfg.yaml:3: surge.ewt_off: ewt_off (60.0) must not exceed ewt_on (30.0): the switch would flap",
        ),
        (
            "surge:\n  queue_length_on: 5\n  queue_length_off: 6\n",
            "cfg.yaml:3: surge.queue_length_off: queue_length_off (6) must not exceed queue_length_on (5): "
            "the switch would flap",
        ),
        (
            "surge:\n  service_level_on: 0.8\n  service_level_off: 0.7\n",
            "cfg.yaml:3: surge.service_level_off: service_level_off (0.7) must not be below service_level_on (0.8): "
            "the switch would flap",
        ),
        ("surge:\n  min_dwell: -1\n", "cfg.yaml:2: surge.min_dwell: Input should be greater than or equal to 0"),
        (
            "surge:\n  schedule:\n    - {start: '09:00', end: '08:00'}\n",
            "cfg.yaml:3: surge.schedule.0.end: end must be after start (a window past midnight is two windows)",
        ),
        (
            "surge:\n  schedule:\n    - start: '8h'\n      end: '09:00'\n",
            "cfg.yaml:3: surge.schedule.0.start: '8h' is not a time: write \"HH:MM\" (00:00 to 24:00)",
        ),
        (
            "surge:\n  schedule:\n    - start: '08:00'\n      end: '09:00'\n      days: [mon, funday]\n",
            "cfg.yaml:5: surge.schedule.0.days.1: Input should be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'",
        ),
        (
            "agents:\n  '1001':\n    ha1: " + HA1 + "\n    skills: {general: 0}\n",
            "cfg.yaml:4: agents.1001.skills.general: Input should be greater than or equal to 1",
        ),
        (
            "agents:\n  '1001':\n    ha1: " + HA1 + "\n    max_misses: 0\n",
            "cfg.yaml:4: agents.1001.max_misses: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_queue_setting_names_file_line_and_field(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_several_problems_are_all_listed() -> None:
    text = "queues:\n  general:\n    ring_timeout: -1\n    wrap_up: -1\nsurge:\n  ewt_on: 10\n  ewt_off: 20\n"
    assert sorted(error_of(text).splitlines()) == [
        "cfg.yaml:3: queues.general.ring_timeout: Input should be greater than 0",
        "cfg.yaml:4: queues.general.wrap_up: Input should be greater than or equal to 0",
        "cfg.yaml:7: surge.ewt_off: ewt_off (20.0) must not exceed ewt_on (10.0): the switch would flap",
    ]


def test_a_bad_file_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "frontdesk.yaml"
    path.write_text("queues:\n  general:\n    overflow: nowhere\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3: queues.general.overflow: Input should be ")


# ------------------------------------------------------------------ runtime updates


def test_queue_runtime_update_applies_each_key() -> None:
    spec = QueueSpec("general")
    new = queue_for_runtime_update(
        spec,
        {
            "max_wait": {"normal": 50, "surge": 30},
            "max_length": 8,
            "announce_every": {"surge": 15},  # a mode left out keeps its value
            "ring_timeout": 9.5,
            "wrap_up": 0,
            "overflow": "callback",
            "surge_overflow": "peak_shaving",
            "strategy": "fewest_calls",
            "service_level_target": 0.9,
        },
    )
    assert new == dataclasses.replace(
        spec,
        max_wait=Limit(50.0, 30.0),
        max_length=Limit(8, 8),
        announce_every=Limit(30.0, 15.0),
        ring_timeout=9.5,
        wrap_up=0.0,
        overflow="callback",
        surge_overflow="peak_shaving",
        strategy="fewest_calls",
        service_level_target=0.9,
    )
    assert queue_for_runtime_update(spec, {}) == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_wiat": 10}, "queue general: unknown setting 'max_wiat'"),
        ({"name": "other"}, "queue general: unknown setting 'name'"),
        ({"max_wait": 0}, "max_wait: must be more than 0 seconds, got 0"),
        ({"max_wait": "60"}, "max_wait: expected a number, got '60'"),
        ({"max_wait": True}, "max_wait: expected a number, got True"),
        ({"max_wait": math.nan}, "max_wait: expected a number, got nan"),
        ({"max_wait": {"normal": 10, "peak": 5}}, "max_wait: unknown key 'peak': use normal and surge"),
        ({"announce_every": {"surge": -1}}, "announce_every.surge: must be more than 0 seconds, got -1"),
        ({"max_length": 2.5}, "max_length: expected a whole number of at least 0, got 2.5"),
        ({"max_length": {"normal": -1}}, "max_length.normal: expected a whole number of at least 0, got -1"),
        ({"ring_timeout": 0}, "ring_timeout: must be more than 0 seconds, got 0"),
        ({"wrap_up": -1}, "wrap_up: must be at least 0 seconds, got -1"),
        ({"overflow": "voicemail"}, "overflow: expected one of callback, message, self_service, peak_shaving"),
        ({"strategy": "random"}, "strategy: expected one of longest_idle, round_robin, fewest_calls, ring_all"),
        ({"service_level_target": 80}, "service_level_target: expected a ratio from 0 to 1, got 80"),
    ],
)
def test_queue_runtime_update_refuses_bad_input(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        queue_for_runtime_update(QueueSpec("general"), changes)


def test_queue_runtime_update_refuses_a_body_that_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="expected a JSON object"):
        queue_for_runtime_update(QueueSpec("general"), [1, 2])  # type: ignore[arg-type]


def test_surge_runtime_update_applies_each_key() -> None:
    spec = SurgeSpec()
    changes: dict[str, Any] = {
        "ewt_on": 90,
        "ewt_off": 30,
        "queue_length_on": 25,
        "queue_length_off": 5,
        "service_level_on": 0.5,
        "service_level_off": 0.7,
        "min_dwell": 0,
        "peak_shaving_ewt": None,
        "auto": False,
        "notice": True,
        "pause_outbound": False,
    }
    assert surge_for_runtime_update(spec, changes) == SurgeSpec(
        auto=False,
        ewt_on=90.0,
        ewt_off=30.0,
        queue_length_on=25,
        queue_length_off=5,
        service_level_on=0.5,
        service_level_off=0.7,
        min_dwell=0.0,
        peak_shaving_ewt=None,
        notice=True,
        pause_outbound=False,
    )
    assert surge_for_runtime_update(spec, {"ewt_on": None, "ewt_off": None}).ewt_on is None


@pytest.mark.parametrize(
    ("changes", "message", "error"),
    [
        ({"schedule": []}, "surge: unknown setting 'schedule'", ValueError),
        ({"auto": "yes"}, "auto: expected true or false, got 'yes'", ValueError),
        ({"auto": None}, "auto: expected true or false, got None", ValueError),
        ({"min_dwell": None}, "min_dwell: expected a number, got None", ValueError),
        ({"ewt_on": -1}, "ewt_on: must be at least 0 seconds, got -1", ValueError),
        ({"queue_length_on": 0}, "queue_length_on: expected a whole number of at least 1, got 0", ValueError),
        ({"service_level_off": 1.5}, "service_level_off: expected a ratio from 0 to 1, got 1.5", ValueError),
        ({"ewt_off": 500}, "surge: ewt_off must not exceed ewt_on", ModelError),  # 500 > the default ewt_on 120
        ({"service_level_on": 0.9, "service_level_off": 0.8}, "surge: service_level_off must not be below", ModelError),
    ],
)
def test_surge_runtime_update_refuses_bad_input(changes: dict[str, Any], message: str, error: type[ValueError]) -> None:
    with pytest.raises(error, match="^" + message):
        surge_for_runtime_update(SurgeSpec(), changes)


def test_a_model_rule_the_fields_missed_still_comes_out_as_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import ivr.settings.queues

    def broken(config: Config) -> Model:
        raise ModelError("queue general: something new is wrong")

    monkeypatch.setattr(ivr.settings.queues, "model_from_config", broken)
    assert error_of("queues:\n  general: {}\n") == "cfg.yaml:1: queues: queue general: something new is wrong"

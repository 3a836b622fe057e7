"""sim/: scenarios, the simulator on the queueing engine, replications, what-ifs, staffing, the report."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ivr.cli import main as cli_main
from queueing.engine import Engine
from queueing.events import CallArrived, Overflow
from queueing.model import Limit
from sim.erlang import agents_needed, evaluate
from sim.plan import Callbacks, Diversion, Plan, Redial, SurgeCommand, constant, exponential, single_queue_plan
from sim.planning import expected_calls, staffing, what_if_variants
from sim.scenario import ScenarioError, load_scenario, parse_scenario
from sim.simulation import Simulation
from sim.stats import replicate, t975

SCENARIOS = Path(__file__).resolve().parent.parent / "sim" / "scenarios"

MINIMAL = """
name: minimal
start: "09:00"
arrivals:
  per_block: [100, 200]
agents:
  teams:
    - {name: a, per_block: [10, 12]}
"""


# ------------------------------------------------------------------ scenarios


@pytest.mark.parametrize("name", ["weekday.yaml", "fault_surge.yaml", "single_queue.yaml"])
def test_example_scenarios_load(name: str) -> None:
    plan = load_scenario(SCENARIOS / name)
    assert plan.blocks >= 16
    assert plan.teams and plan.sources


def test_weekday_reuses_queue_settings_and_reads_its_csv_files() -> None:
    plan = load_scenario(SCENARIOS / "weekday.yaml")
    assert [q.name for q in plan.model.queues] == ["general", "billing"]
    assert plan.model.queues[0].max_wait.normal == 120
    assert plan.handle_time["billing"].kind == "empirical" and len(plan.handle_time["billing"].values) == 24
    assert plan.offered_per_block()[:3] == pytest.approx([180, 260, 340])
    assert plan.tiers[("billing", "business")] == ("special", False)
    assert plan.tiers[("billing", None)] == ("ordinary", False)
    # 30 % shrinkage: 22 rostered, 15 on the phones
    assert plan.teams[0].rostered[0] == 22 and plan.teams[0].on_phones[0] == 15


def test_fault_surge_takes_the_servers_config_and_adds_a_group_stream() -> None:
    plan = load_scenario(SCENARIOS / "fault_surge.yaml")
    assert plan.model.surge.notice and plan.model.surge.peak_shaving_ewt == 240
    fault = [s for s in plan.sources if s.group == "north"]
    assert len(fault) == 1 and fault[0].notice_resolves == 0.35
    # the fault stream starts at 10:00 (block 8 of 15 minutes) and decays
    per_block = [fault[0].expected_calls(i * 900, (i + 1) * 900) for i in range(plan.blocks)]
    assert per_block[:8] == [0] * 8
    assert per_block[8] > per_block[9] > per_block[10] > 0
    assert per_block[16] == 0
    assert [r.name for r in plan.reserves] == ["team_leads", "overtime", "back_office", "home"]


def test_surge_shapes_multiply_the_base_rate() -> None:
    text = MINIMAL.replace(
        "  per_block: [100, 200]",
        "  per_block: [100, 100, 100, 100]\n"
        "  surges:\n"
        '    - {shape: step, start: "09:30", end: "10:00", factor: 3}\n'
        '    - {shape: ramp, start: "10:00", peak: "10:30", end: "11:00", factor: 5}',
    ).replace("[10, 12]", "10")
    plan = parse_scenario(text)
    got = plan.offered_per_block()
    assert got[0] == pytest.approx(100)
    assert got[1] == pytest.approx(300)
    # a ramp from x1 to x5 over the block averages x3, and back down again
    assert got[2] == pytest.approx(300, rel=0.01) and got[3] == pytest.approx(300, rel=0.01)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("[100, 200]", "[100, -1]"), "<scenario>:5: arrivals.per_block.1: Input should be greater than or equal to 0"),
        (("[10, 12]", "[10]"), None),  # one number per block is fine... as a list of one it is every block
        (("[10, 12]", "[10, 12, 14]"), "<scenario>:8: agents.teams.0.per_block: 3 blocks; the arrivals have 2"),
        (("name: minimal", "name: minimal\nsurprise: 1"), "<scenario>:3: surprise: unknown setting"),
        (
            (
                "  per_block: [100, 200]",
                "  per_block: [100, 200]\n  surges: [{shape: fault, group: north, start: '10:00', calls: 5}]",
            ),
            "<scenario>:6: arrivals.surges.0.group: unknown caller group 'north': list it under callers.groups",
        ),
        (
            ("  per_block: [100, 200]", "  per_block: [100, 200]\n  surges: [{shape: spike, start: '10:00'}]"),
            "<scenario>:6: arrivals.surges.0: a spike surge needs a factor",
        ),
        (
            ("agents:", "callers: {handle_time: {dist: lognormal, mean: 100}}\nagents:"),
            "lognormal distribution needs sd",
        ),
    ],
)
def test_scenario_errors_name_the_line_and_field(change: tuple[str, str], where: str | None) -> None:
    text = MINIMAL.replace(*change)
    if where is None:
        parse_scenario(text)
        return
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text)
    assert where in str(err.value)


def test_arrivals_csv_errors_name_the_csv_line(tmp_path: Path) -> None:
    (tmp_path / "calls.csv").write_text("# counts\nstart,calls\n09:00,100\n09:30,x\n")
    (tmp_path / "s.yaml").write_text(MINIMAL.replace("per_block: [100, 200]", "csv: calls.csv"))
    with pytest.raises(ScenarioError, match=r"calls.csv:4: calls: 'x' is not a number"):
        load_scenario(tmp_path / "s.yaml")
    (tmp_path / "calls.csv").write_text("start,calls\n09:00,100\n10:00,100\n")
    with pytest.raises(ScenarioError, match=r"calls.csv:3: start '10:00': expected 09:30"):
        load_scenario(tmp_path / "s.yaml")
    (tmp_path / "calls.csv").write_text("start,calls\n09:00,100\n09:30,150\n")
    assert load_scenario(tmp_path / "s.yaml").offered_per_block() == pytest.approx([100, 150])


# ------------------------------------------------------------------ the simulator


def test_same_seed_same_day_other_seed_other_day() -> None:
    plan = load_scenario(SCENARIOS / "fault_surge.yaml")
    a, b, c = Simulation(plan, 5).run(), Simulation(plan, 5).run(), Simulation(plan, 6).run()
    assert a.blocks == b.blocks and a.events == b.events
    assert a.blocks != c.blocks


def test_the_engine_is_fed_only_live_router_events_and_counts_match() -> None:
    trace: list = []
    plan = load_scenario(SCENARIOS / "fault_surge.yaml")
    sim = Simulation(plan, 3, trace=trace)
    result = sim.run()
    kinds = {type(e).__name__ for e, _ in trace}
    assert kinds <= {
        "CallArrived", "AgentAnswered", "CallEnded", "CallerHungUp", "TimerFired", "AgentLoggedIn",
        "AgentLoggedOut", "AgentNotReady", "AgentReady", "SurgeSwitch", "AgentNoAnswer",
    }  # fmt: skip
    # replaying the trace into a fresh engine gives the same decisions: the simulator decides nothing itself
    replay = Engine(plan.model)
    for event, decisions in trace:
        assert replay.handle(event) == decisions
    offered = sum(1 for e, _ in trace if isinstance(e, CallArrived))
    assert offered == sum(b["offered"] for b in result.blocks)
    shaved = sum(1 for _, ds in trace for d in ds if isinstance(d, Overflow) and d.target == "callback")
    assert shaved == sum(b["overflow_callback"] for b in result.blocks)
    # the fault callers are in the north group; they reached the queue as the lowest tier
    assert sum(b["diverted_notice"] for b in result.blocks) > 0
    assert result.blocks[8]["reserves_online"] >= 1  # R17: the reserve came in during the surge


def test_roster_logs_agents_in_and_out_per_block() -> None:
    plan = parse_scenario(MINIMAL.replace("[100, 200]", "[100, 100, 100]").replace("[10, 12]", "[10, 4, 7]"))
    result = Simulation(plan, 1).run()
    # the state is sampled every minute: a block's mean is close to its roster (leavers finish their calls)
    assert [round(b["agents_mean"]) for b in result.blocks] == [10, 4, 7]
    assert [b["agents_planned"] for b in result.blocks] == [10, 4, 7]


def callback_plan(**callbacks: Any) -> Plan:
    """Two hours of one queue whose callers overflow to a callback after 30 s; every one of them books."""
    base = single_queue_plan(arrival_rate=12 / 180, aht=180, agents=10, hours=2)
    spec = base.model.queues[0]
    queue = dataclasses.replace(spec, max_wait=Limit(30, 30), overflow="callback", surge_overflow="callback")
    model = dataclasses.replace(base.model, queues=(queue,))
    return base.with_changes(
        model=model, callbacks=Callbacks(take_up=1.0, promise_margin=60, **callbacks), queue_mix=(("general", 1.0),)
    )


def test_callbacks_are_served_when_calm_and_paused_in_surge() -> None:
    plan = callback_plan()
    calm = Simulation(plan, 2).run()
    booked = sum(b["callbacks_booked"] for b in calm.blocks)
    assert booked == sum(b["overflow_callback"] for b in calm.blocks) > 0
    assert sum(b["callbacks_served"] for b in calm.blocks) > 0
    surge = Simulation(plan.with_changes(surge_commands=(SurgeCommand(0.0, True, "manual"),)), 2).run()
    assert sum(b["callbacks_served"] for b in surge.blocks) == 0  # R15: outbound paused all along
    assert surge.owed_at_end == sum(b["callbacks_booked"] for b in surge.blocks) > 0


def test_customers_who_do_not_answer_are_tried_again_then_the_callback_fails() -> None:
    plan = callback_plan(customer_answers=0.5, max_attempts=2, retry_delay=120, customer_ring=30)
    r = Simulation(plan, 2).run()
    total = {k: sum(b[k] for b in r.blocks) for k in r.blocks[0]}
    booked, served, failed = total["callbacks_booked"], total["callbacks_served"], total["callbacks_failed"]
    no_answer = total["callback_no_answer"]
    assert booked > 30
    # every booking is served, failed, expired, closed by R10, or still owed (a retry waiting included)
    closed = total["callbacks_closed_reached_agent"]
    assert served + failed + total["callbacks_expired"] + closed + r.owed_at_end == booked
    # half the attempts go unanswered; a callback fails after its second unanswered one
    attempts = served + no_answer
    assert 0.35 < no_answer / attempts < 0.65
    assert 0 < failed <= no_answer / 2
    # every customer answers: nothing fails, nothing is unanswered
    everyone = Simulation(callback_plan(), 2).run()
    assert sum(b["callbacks_failed"] + b["callback_no_answer"] for b in everyone.blocks) == 0


def test_callers_who_booked_may_call_again_and_get_their_callback_closed() -> None:
    """R10 in the simulator: a booked caller who calls again and reaches an agent has the callback closed."""
    plan = callback_plan(call_again=1.0).with_changes(redial=Redial(probability=0.0, delay=constant(30)))
    r = Simulation(plan, 2).run()
    redials = sum(b["redials"] for b in r.blocks)
    closed = sum(b["callbacks_closed_reached_agent"] for b in r.blocks)
    assert redials > 0
    assert 0 < closed <= redials
    never = Simulation(callback_plan(), 2).run()
    assert sum(b["redials"] + b["callbacks_closed_reached_agent"] for b in never.blocks) == 0


def test_redials_and_diversions_are_counted() -> None:
    plan = single_queue_plan(arrival_rate=15 / 180, aht=180, agents=10, patience=60, hours=2).with_changes(
        redial=Redial(probability=1.0, delay=constant(60), max_attempts=2),
        diversion=Diversion(hotkey=0.2, self_service=0.1, when="always"),
    )
    r = Simulation(plan, 4).run()
    calls = sum(b["calls"] for b in r.blocks)
    redials = sum(b["redials"] for b in r.blocks)
    abandoned = sum(b["abandoned"] for b in r.blocks)
    hot, self_service = (sum(b[k] for b in r.blocks) for k in ("diverted_hotkey", "diverted_self_service"))
    assert 0 < redials <= abandoned
    assert hot / calls == pytest.approx(0.2, abs=0.03) and self_service / calls == pytest.approx(0.1, abs=0.03)
    assert sum(b["offered"] for b in r.blocks) == calls - hot - self_service


# ------------------------------------------------------------------ against Erlang


def test_mmn_matches_erlang_c_within_the_confidence_interval() -> None:
    rate, aht, n = 8 / 180, 180.0, 10
    plan = single_queue_plan(arrival_rate=rate, aht=aht, agents=n, hours=8, warmup_blocks=1, seed=100)
    s = replicate(plan, 12)
    want = evaluate("c", rate, aht, n, target_wait=20)
    t = s.totals
    assert t["service_level"].contains(want.service_level), (t["service_level"], want)
    assert t["asa_s"].contains(want.asa_s), (t["asa_s"], want)
    assert t["abandoned"].mean == 0


def test_mmn_plus_m_matches_erlang_a_within_the_confidence_interval() -> None:
    rate, aht, n, patience = 12 / 180, 180.0, 10, 120.0
    plan = single_queue_plan(
        arrival_rate=rate, aht=aht, agents=n, patience=patience, hours=8, warmup_blocks=1, seed=200
    )
    s = replicate(plan, 12)
    want = evaluate("a", rate, aht, n, patience=patience, target_wait=20)
    t = s.totals
    assert t["service_level"].contains(want.service_level), (t["service_level"], want)
    assert t["abandon_rate"].contains(want.p_abandon), (t["abandon_rate"], want)
    assert t["asa_s"].contains(want.asa_s), (t["asa_s"], want)


# ------------------------------------------------------------------ planning


def test_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(9) == 2.262
    assert 2.042 > t975(35) > 2.021
    assert t975(10_000) == pytest.approx(1.96, abs=1e-3)


def test_what_if_variants_change_one_policy_each() -> None:
    plan = load_scenario(SCENARIOS / "fault_surge.yaml")
    variants = dict(what_if_variants(plan))
    assert list(variants) == ["scenario", "surge off", "surge on all day", "peak shaving off", "callback offer off"]
    assert variants["surge off"].model.surge.auto is False
    assert variants["peak shaving off"].model.surge.peak_shaving_ewt is None
    assert variants["callback offer off"].callbacks is None
    assert variants["surge on all day"].surge_commands == (SurgeCommand(0.0, True, "manual"),)


def test_staffing_meets_the_target_by_erlang_and_simulation() -> None:
    plan = single_queue_plan(arrival_rate=10 / 180, aht=180, agents=1, patience=120, hours=2, block_seconds=1800)
    plan = plan.with_changes(ring_delay=constant(0.0), handle_time={"general": exponential(180.0)})
    assert expected_calls(plan)["general"] == pytest.approx([100.0] * 4)
    result = staffing(plan, max_abandon=0.05, replications=4, rounds=3)
    want, _ = agents_needed(10 / 180, 180, service_level=0.8, target_wait=20, patience=120, max_abandon=0.05)
    assert {r.erlang_agents for r in result.rows} == {want}
    assert all(r.agents >= r.erlang_agents for r in result.rows)
    assert all(r.simulated_service_level is not None for r in result.rows)


# ------------------------------------------------------------------ the command line


def test_sim_command_prints_a_summary_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(MINIMAL)
    out = tmp_path / "report"
    assert cli_main(["sim", str(scenario), "-n", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "minimal: 2 blocks of 30 min from 09:00, 3 replications" in captured.out
    assert "3/3 runs" in captured.err  # the progress bar
    names = {p.name for p in out.iterdir()}
    assert {"blocks.csv", "blocks.json", "summary.json", "runs.csv"} <= names
    assert {
        "arrivals_vs_capacity.png",
        "queue_length.png",
        "service_level.png",
        "callbacks_owed.png",
        "surge.png",
    } <= names
    rows = list(csv.DictReader((out / "blocks.csv").open()))
    assert [r["start"] for r in rows] == ["09:00", "09:30"]
    assert 0 <= float(rows[0]["service_level"]) <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replications"] == 3 and summary["seeds"] == [1, 2, 3]
    assert set(summary["totals"]["service_level"]) == {"mean", "ci95", "low", "high"}
    assert cli_main(["sim", str(tmp_path / "missing.yaml")]) == 2

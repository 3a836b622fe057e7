"""Cluster sizing in the planner (sim/planning.py, sim/report.py): nodes for the busiest block, exact on small cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ivr.cli import main as cli_main
from sim.planning import BlockLoad, block_loads, peak_arrival_rates, size_blocks, sizing
from sim.scenario import ScenarioError, parse_scenario
from sim.scenario_schema import (
    ENGINE_EVENTS_PER_REPLICA,
    MEDIA_STREAMS_PER_NODE,
    SIP_CALLS_PER_NODE,
    SizingSettings,
)
from sim.simulation import RunResult
from sim.stats import Summary, replicate

SMALL = """
name: small
start: "09:00"
arrivals:
  per_block: [180, 360]
callers:
  handle_time: 100
  patience: null
agents:
  teams:
    - {name: a, per_block: 10}
  ring_delay: 0
"""


def caps(**changes: float) -> SizingSettings:
    fields: dict[str, float] = {
        "headroom": 0.5,
        "spare_nodes": 1,
        "sip_calls_per_node": 1000,
        "media_streams_per_node": 1000,
        "engine_events_per_replica": 100_000,
        "kamailio_calls_per_worker": 2000,
    }
    fields.update(changes)
    return SizingSettings.model_validate(fields)


# ------------------------------------------------------------------ the arithmetic


def test_sip_alone_at_half_headroom_needs_two_nodes_plus_one() -> None:
    s = size_blocks([BlockLoad(0, 1000.0, 0.0, 0.0)], caps(), 4.0)
    # 1000 calls/s = one node's worth; each node may run at 50 %: 2 nodes, +1 spare
    assert (s.nodes_for_load, s.nodes, s.limit) == (2, 3, "SIP")
    assert dict(s.shares) == {"SIP": 0.5, "media": 0.0, "engine": 0.0}
    assert s.kamailio_workers == 1  # 1000 / (2000 * 0.5)


def test_sip_and_media_add_up_on_a_node() -> None:
    # 300 calls/s (0.3 node) + 300 streams (0.3 node) = 0.6 of a node, over 0.5 allowed: 2 nodes
    s = size_blocks([BlockLoad(0, 300.0, 300.0, 0.0)], caps(), 4.0)
    assert s.nodes_for_load == 2
    assert dict(s.shares) == {"SIP": 0.15, "media": 0.15, "engine": 0.0}


def test_the_limit_switches_from_media_to_sip_as_media_gets_cheaper() -> None:
    busy_sip = BlockLoad(0, 1000.0, 100.0, 0.0)  # short calls, many of them
    busy_media = BlockLoad(1, 100.0, 2000.0, 0.0)  # long calls: many streams
    s = size_blocks([busy_sip, busy_media], caps(), 4.0)
    # block 0: (1.0 + 0.1) / 0.5 = 2.2 -> 3; block 1: (0.1 + 2.0) / 0.5 = 4.2 -> 5
    assert (s.peak.block, s.nodes_for_load, s.limit) == (1, 5, "media")
    s = size_blocks([busy_sip, busy_media], caps(media_streams_per_node=10_000), 4.0)
    # block 0: (1.0 + 0.01) / 0.5 = 2.02 -> 3; block 1: (0.1 + 0.2) / 0.5 = 0.6 -> 1
    assert (s.peak.block, s.nodes_for_load, s.nodes, s.limit) == (0, 3, 4, "SIP")


def test_a_node_exactly_full_is_not_rounded_up() -> None:
    # 100 calls/s of 1000 is 0.1 of a node; headroom 0.9 leaves 0.1: exactly one node (1.0000000000000002 in floats)
    s = size_blocks([BlockLoad(0, 100.0, 0.0, 0.0)], caps(headroom=0.9), 4.0)
    assert s.nodes_for_load == 1


def test_every_node_pays_for_the_engine() -> None:
    # the replica takes 20 % of every node, so 30 % of each is left for 1.0 node of SIP: 4 nodes
    s = size_blocks([BlockLoad(0, 1000.0, 0.0, 20_000.0)], caps(), 4.0)
    assert s.nodes_for_load == 4
    assert s.shares["engine"] == 0.2 and s.shares["SIP"] == 0.25
    assert s.logs_needed == 1


def test_an_engine_over_a_node_cannot_be_carried_by_more_nodes() -> None:
    s = size_blocks([BlockLoad(0, 10.0, 10.0, 60_000.0), BlockLoad(1, 10.0, 10.0, 120_000.0)], caps(), 4.0)
    assert (s.nodes_for_load, s.nodes, s.limit) == (None, None, "engine")
    assert s.peak.block == 1
    assert s.logs_needed == 3  # 120,000 / (100,000 * 0.5) = 2.4 logs


def test_zero_traffic_needs_one_node_and_the_spare() -> None:
    for blocks in ([BlockLoad(0, 0.0, 0.0, 0.0), BlockLoad(1, 0.0, 0.0, 0.0)], []):
        s = size_blocks(blocks, caps(), 0.0)
        assert (s.nodes_for_load, s.nodes, s.limit) == (1, 2, "none")
        assert s.kamailio_workers == 1 and s.logs_needed == 1


def test_the_defaults_are_the_measured_figures() -> None:
    d = SizingSettings()
    assert (d.sip_calls_per_node, d.media_streams_per_node, d.engine_events_per_replica) == (1177, 1000, 149_843)
    assert (SIP_CALLS_PER_NODE, MEDIA_STREAMS_PER_NODE, ENGINE_EVENTS_PER_REPLICA) == (1177, 1000, 149_843)
    assert (d.headroom, d.spare_nodes, d.events_per_call) == (0.3, 1, None)


# ------------------------------------------------------------------ from a scenario


def test_peak_arrival_rate_is_the_busiest_step_of_each_block() -> None:
    plan = parse_scenario(SMALL)
    assert peak_arrival_rates(plan) == [0.1, 0.2]  # 180 and 360 calls in 30 minutes
    plan = parse_scenario(
        SMALL.replace(
            "  per_block: [180, 360]",
            '  per_block: [180, 360]\n  surges:\n    - {shape: step, start: "09:10", end: "09:20", factor: 3}',
        )
    )
    assert peak_arrival_rates(plan) == pytest.approx([0.3, 0.2], rel=1e-12)


def test_block_loads_from_the_runs() -> None:
    plan = parse_scenario(SMALL)
    zero = {"redials": 0.0, "callbacks_served": 0.0, "callback_no_answer": 0.0}
    blocks = [
        {**zero, "answered": 18.0, "a.answered": 18.0, "a.ring_no_answer": 2.0, "queue_length_max": 5.0},
        {**zero, "redials": 36.0, "answered": 0.0, "a.answered": 0.0, "a.ring_no_answer": 0.0, "queue_length_max": 0.0},
    ]
    queue = plan.model.queues[0].name
    blocks = [{k.replace("a.", f"{queue}."): v for k, v in b.items()} for b in blocks]
    run = RunResult(seed=1, blocks=blocks, samples=[], surge_changes=[], waiting_at_end=0, owed_at_end=0,
                    events=400, calls=100)  # fmt: skip
    summary = Summary(plan, [run], [], {}, {}, 0.0)
    loads, per_call = block_loads(summary)
    assert per_call == 4.0
    first, second = loads
    # callers 0.1/s; legs to agents: 18 answered + 2 not answered in 1800 s
    assert first.calls_per_s == pytest.approx(0.1 + 20 / 1800, rel=1e-12)
    # 18 answered calls of 100 s in 1800 s: 1 talking on average, 2 streams; 5 in line at most
    assert first.streams == pytest.approx(7.0, rel=1e-12)
    assert first.events_per_s == pytest.approx(0.4, rel=1e-12)
    # redials add to the callers: 0.2 + 36/1800
    assert second.calls_per_s == pytest.approx(0.22, rel=1e-12)
    assert second.events_per_s == pytest.approx(0.88, rel=1e-12)
    loads, per_call = block_loads(summary, events_per_call=10.0)
    assert per_call == 10.0 and loads[0].events_per_s == pytest.approx(1.0, rel=1e-12)


def test_a_simulated_day_is_sized_and_more_streams_need_more_nodes() -> None:
    plan = parse_scenario(SMALL)
    summary = replicate(plan, 2)
    s = sizing(summary, SizingSettings())
    assert (s.nodes_for_load, s.nodes, s.limit) == (1, 2, "media")
    s = sizing(summary, SizingSettings(media_streams_per_node=1, headroom=0))
    assert s.limit == "media"
    assert s.nodes_for_load is not None and s.nodes_for_load >= s.peak.streams > 1


# ------------------------------------------------------------------ settings and the command line


def test_a_bad_capacity_in_the_scenario_names_the_line_and_field() -> None:
    with pytest.raises(ScenarioError, match=r":\d+: sizing.headroom: .*less than 1"):
        parse_scenario(SMALL + "sizing:\n  headroom: 1.5\n")
    with pytest.raises(ScenarioError, match=r"sizing.media_streams_per_node: .*greater than 0"):
        parse_scenario(SMALL + "sizing:\n  media_streams_per_node: 0\n")
    with pytest.raises(ValidationError):
        SizingSettings(spare_nodes=-1)


def test_the_command_line_overrides_the_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL + "sizing:\n  spare_nodes: 2\n  media_streams_per_node: 5\n")
    out = tmp_path / "report"
    argv = ["sim", str(scenario), "-n", "2", "--sizing", "--no-progress", "--no-plots", "--out", str(out)]
    assert cli_main([*argv, "--headroom", "0"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "sizing.json").read_text())
    assert data["capacities"]["spare_nodes"] == 2 and data["capacities"]["headroom"] == 0
    assert data["capacities"]["media_streams_per_node"] == 5
    assert data["limit"] == "media"
    assert data["nodes"] == data["nodes_for_load"] + 2
    assert len(data["blocks"]) == 2
    assert f"= {data['nodes']};" in printed and "media limits" in printed


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--sip-calls-per-node", "0", "--sip-calls-per-node (sizing.sip_calls_per_node): Input should be greater"),
        ("--headroom", "1", "--headroom (sizing.headroom): Input should be less than 1"),
        ("--spare-nodes", "-1", "--spare-nodes (sizing.spare_nodes)"),
        ("--engine-events-per-replica", "inf", "--engine-events-per-replica (sizing.engine_events_per_replica)"),
    ],
)
def test_a_bad_capacity_on_the_command_line_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, words: str
) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL)
    assert cli_main(["sim", str(scenario), "-n", "1", "--no-progress", flag, value]) == 2  # implies --sizing
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_longer_calls_move_the_limit_from_sip_to_media() -> None:
    def at(talk: float) -> BlockLoad:  # 1000 calls/s; Little's law: 2 streams per call talking
        return BlockLoad(0, 1000.0, 2 * 1000.0 * talk, 0.0)

    short, long = size_blocks([at(0.05)], caps(), 4.0), size_blocks([at(1.0)], caps(), 4.0)
    assert (short.limit, short.nodes_for_load) == ("SIP", 3)  # (1.0 + 0.1) / 0.5 = 2.2
    assert (long.limit, long.nodes_for_load) == ("media", 6)  # (1.0 + 2.0) / 0.5 = 6


def test_a_scenario_without_calls_needs_one_node_and_the_spare() -> None:
    plan = parse_scenario(SMALL.replace("[180, 360]", "[0, 0]"))
    s = sizing(replicate(plan, 2), SizingSettings())
    assert (s.nodes_for_load, s.nodes, s.limit, s.events_per_call) == (1, 2, "none", 0.0)
    assert all((b.calls_per_s, b.streams, b.events_per_s) == (0.0, 0.0, 0.0) for b in s.blocks)

"""`frontdesk load`: a scenario played to the real server over SIP, beside the simulator's prediction.

The fast tests cover what happens before any call: the calls drawn from a
scenario, what a load run refuses to play, the `load` section's checks, the
loopback rule and SIPp's call list.

The live test plays the first 150 s of sim/scenarios/load_check.yaml (about
300 calls) to a server started with sim/scenarios/load_server.yaml: SIPp
callers (sim/scenarios/load_caller.xml) and ten pyVoIP agents' phones. The
server's own counters must give a service level and an abandonment within
5 points of the simulator run on the same calls, with every caller in the
books, no SIPp call failed, and no caller cut off for silence (the callers
stream audio; the server's media timeout is 5 s). The load generator's
ports (the phones' blocks and SIPp's media ports) are ranges of
tests/support/ports.py, passed with ``--phone-ports`` and ``--sipp-media-port``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.ports import port_range, release
from support.server import ROOT, Server

from sim.live.load import write_callers
from sim.live.loadcalls import (
    LoadCall,
    LoadError,
    draw_calls,
    loopback_target,
    predict_same_calls,
    replay_problems,
    window,
)
from sim.plan import Diversion, LoadPlan, Redial, ScriptedCall, single_queue_plan
from sim.scenario import ScenarioError, load_scenario, parse_scenario
from sim.simulation import Simulation

SCENARIOS = ROOT / "sim" / "scenarios"
CHECK = SCENARIOS / "load_check.yaml"


def check_plan() -> Any:
    return load_scenario(CHECK)


# -- the calls -------------------------------------------------------------------------------------


def test_calls_are_drawn_from_the_scenario_reproducibly() -> None:
    plan = check_plan()
    calls = draw_calls(plan, 3, 150.0)
    assert calls == draw_calls(plan, 3, 150.0)
    assert calls != draw_calls(plan, 4, 150.0)
    # 2 calls a second for 150 s: Poisson, so 300 +- 3 sd (17)
    assert 250 <= len(calls) <= 350
    assert all(0 <= c.at < 150 for c in calls)
    assert [c.at for c in calls] == sorted(c.at for c in calls)
    assert len({c.number for c in calls}) == len(calls)
    assert calls[0].number == "4470000000"
    diverted = [c for c in calls if c.diverted]
    assert {c.diverted for c in diverted} == {"self_service"}
    assert 0.03 < len(diverted) / len(calls) < 0.2  # a tenth of them
    assert {c.key for c in diverted} == {"3"}
    assert {c.key for c in calls if not c.diverted} == {"1"}
    assert all(c.queue == "general" for c in calls)
    # exponential talk (mean 3 s) and patience (mean 8 s)
    assert 2.4 < sum(c.handle for c in calls) / len(calls) < 3.6
    assert 6.4 < sum(c.patience for c in calls) / len(calls) < 9.6
    # the key is pressed key_delay (0.3 s) after the answer: the INVITE goes that much earlier
    assert calls[0].dial_at(0.3) == pytest.approx(calls[0].at - 0.3)
    assert LoadCall("1", 5.0, "general", None, 1.0, 1.0).dial_at(0.3) == 5.0


def test_the_window_keeps_only_the_first_seconds() -> None:
    plan = check_plan()
    short = window(plan, 60.0)
    assert [(s.start, s.end) for s in short.sources[0].steps] == [(0.0, 60.0)]
    assert short.warmup_blocks == 0
    assert short.duration == plan.duration  # the block runs on: the calls in the window are all decided
    assert all(c.at < 60 for c in draw_calls(plan, 3, 60.0))


def test_the_same_calls_prediction_is_the_simulator_on_that_script() -> None:
    plan = check_plan()
    calls = draw_calls(plan, 3, 100.0)
    got = predict_same_calls(plan, calls, 100.0, 3)
    queued = [c for c in calls if c.diverted is None]
    assert got["calls"] == len(calls)
    assert got["diverted"] == len(calls) - len(queued)
    assert got["offered"] == len(queued)
    assert got["answered"] + got["abandoned"] + got["overflowed"] == got["offered"]
    # by hand: the same script through the simulator gives the same books
    sim_plan = window(plan, 100.0).with_changes(diversion=Diversion(), callbacks=None)
    script = [ScriptedCall(c.at, c.queue, c.handle, c.patience) for c in queued]
    run = Simulation(sim_plan, 3, script=script).run()
    assert sum(b["answered"] for b in run.blocks) == got["answered"]
    assert 0.0 < got["service_level"] < 1.0
    assert 0.0 < got["abandon_rate"] < 0.5


def test_a_callers_line_for_sipp(tmp_path: Path) -> None:
    ld = LoadPlan(keys={"general": "1"}, key_delay=0.5, leave_after=10.0)
    calls = [
        LoadCall("4470000000", 1.25, "general", "1", 3.0, 7.5),
        LoadCall("4470000001", 2.0, "general", "3", 3.0, 2.0, diverted="self_service"),
        LoadCall("4470000002", 3.0, "general", "1", 3.0, math.inf),
    ]
    path = write_callers(calls, ld, 1000.0, tmp_path)
    assert path.read_text().splitlines() == [
        "SEQUENTIAL",
        "4470000000;1000750;1;7500;500",  # INVITE at t0 + 1.25 - 0.5 s, in ms since 1970
        "4470000001;1001500;3;10000;500",  # a diverted caller hangs up leave_after after the key
        "4470000002;1002500;1;100000000000;500",  # never: three years
    ]
    assert (tmp_path / "caller_audio.ulaw").read_bytes() == b"\xff" * 8000


# -- what cannot be played -------------------------------------------------------------------------


def test_what_a_load_run_cannot_play_is_listed() -> None:
    plan = check_plan()
    assert replay_problems(plan) == []
    assert replay_problems(plan.with_changes(load=None)) == [
        "the scenario has no `load` section (what callers dial, which agents play the teams)"
    ]
    bad = plan.with_changes(
        group_shares=(("north", 0.1),),
        redial=Redial(probability=0.3),
        diversion=Diversion(hotkey=0.2, self_service=0.1, when="surge"),
    )
    problems = replay_problems(bad)
    assert any(p.startswith("caller groups") for p in problems)
    assert any(p.startswith("callers.redial") for p in problems)
    assert any(p.startswith("callers.diversion.when: surge") for p in problems)
    assert "callers.diversion.hotkey needs load.hotkey_key" in problems
    fault = load_scenario(SCENARIOS / "fault_surge.yaml").with_changes(load=plan.load)
    problems = replay_problems(fault)
    assert any(p.startswith("callbacks.take_up") for p in problems)
    assert any(p.startswith("agents.reserves") for p in problems)
    assert any(p.startswith("surges.notice_resolves") for p in problems)


def test_only_loopback_targets() -> None:
    assert loopback_target("127.0.0.1:5060") == ("127.0.0.1", 5060)
    assert loopback_target("[::1]:5070") == ("::1", 5070)
    assert loopback_target("localhost:5080") == ("127.0.0.1", 5080)
    for bad, why in [
        ("10.1.2.3:5060", "loopback addresses only"),
        ("pbx.example.com:5060", "loopback addresses only"),
        ("127.0.0.1", "give HOST:PORT"),
        ("127.0.0.1:99999", "give HOST:PORT"),
    ]:
        with pytest.raises(LoadError, match=why):
            loopback_target(bad)


def test_the_load_section_is_checked_with_file_and_line() -> None:
    text = CHECK.read_text().replace("server_config: load_server.yaml", f"server_config: {SCENARIOS}/load_server.yaml")
    plan = parse_scenario(text, "load.yaml")
    assert plan.load is not None
    assert plan.load.agents["desk"][:2] == ("a01", "a02")
    assert plan.load.keys == {"general": "1"}
    lines = text.splitlines()
    keys_line = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("keys:"))
    for old, new, message in [
        ("keys: {general: \"1\"}", "keys: {billing: \"1\"}",
         f"load.yaml:{keys_line}: load.keys.billing: unknown queue"),
        ("keys: {general: \"1\"}", "keys: {general: \"12\"}", "load.keys.general: String should match pattern"),
        ("self_service_key: \"3\"", "self_service_key: \"1\"", "load.keys: two choices share a key"),
        ("desk: [a01, a02, a03, a04, a05, a06, a07, a08, a09, a10]", "desk: [a01, a02]",
         "load.agents.desk: 2 agents for a team with up to 10 on the phones"),
        ("desk: [a01, a02, a03, a04, a05, a06, a07, a08, a09, a10]", "sales: [a01]",
         "load.agents: team 'desk' needs its agents"),
        ("key_delay: 0.3", "key_delay: -1", "load.key_delay: Input should be greater than or equal to 0"),
    ]:  # fmt: skip
        assert old in text
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(text.replace(old, new), "load.yaml")


def test_a_scenario_without_load_section_is_refused_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    from sim.live.load import main

    assert main([str(SCENARIOS / "single_queue.yaml"), "--target", "127.0.0.1:5999"]) == 2
    err = capsys.readouterr().err
    assert "cannot be played over SIP" in err and "no `load` section" in err
    assert main([str(CHECK), "--target", "192.0.2.1:5060"]) == 2
    assert "loopback addresses only" in capsys.readouterr().err


def test_single_queue_plan_has_no_load_section() -> None:
    assert single_queue_plan(arrival_rate=1, aht=1, agents=1).load is None


# -- live ------------------------------------------------------------------------------------------


def load_server_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((SCENARIOS / "load_server.yaml").read_text())
    for section in ("sip", "http"):
        config[section] = {k: v for k, v in config[section].items() if k not in ("port", "listen")}
    config["sip"]["hold_time"] = 3600  # the test server's default is 2 s
    return config


@pytest.mark.slow
@pytest.mark.sipp
@pytest.mark.pyvoip
def test_a_live_run_matches_the_simulator(server_factory: Any, tmp_path: Path, sipp: str) -> None:
    server: Server = server_factory(load_server_config())
    scenario = tmp_path / "load_check.yaml"
    scenario.write_text(
        CHECK.read_text().replace("server_config: load_server.yaml", f"server_config: {tmp_path / 'frontdesk.yaml'}")
    )
    out = tmp_path / "load.json"
    max_calls = 400
    phones = port_range(21 * 20)  # ten phones of 21 ports, room to register each again, and SIPp's SIP port
    media = port_range(4 * max_calls + 4)  # SIPp binds base and base + 2; call n's SDP names base + 4 (n - 1)
    cmd = [
        sys.executable, "-m", "ivr.cli", "load", str(scenario),
        "--target", server.sip_target,
        "--metrics", f"http://127.0.0.1:{server.http_port}/metrics",
        "--password", "load-{agent}",
        "--duration", "150",
        "--drain", "120",
        "--json", str(out),
        "--tolerance", "5",
        "--max-calls", str(max_calls),
        "--phone-ports", f"{phones.start}-{phones[-1]}",
        "--sipp-media-port", str(media.start),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    finally:
        release(phones)
        release(media)
    report = proc.stdout + proc.stderr
    assert out.exists(), report
    got = json.loads(out.read_text())
    live, same = got["live"], got["same_calls"]
    assert proc.returncode == 0, report
    assert got["warnings"] == [], report
    # every caller was placed and is in the books
    assert int(got["sipp"]["TotalCallCreated"]) == live["calls"] == same["calls"], report
    assert int(got["sipp"]["FailedCall(C)"]) == 0, report
    assert 250 <= live["calls"] <= 350
    assert live["offered"] == same["offered"] == live["calls"] - live["diverted"], report
    assert live["answered"] + live["abandoned"] + live["overflowed"] == live["offered"], report
    # the KPIs: within 5 points of the simulator on the same calls
    assert abs(live["service_level"] - same["service_level"]) <= 0.05, report
    assert abs(live["abandon_rate"] - same["abandon_rate"]) <= 0.05, report
    assert live["abandoned"] > 10 and live["answered"] > 150, report  # a busy stretch, not an idle one
    # the agents answered every ring; none of their phones failed
    assert got["agents"]["errors"] == [], report
    assert got["agents"]["answered"] == got["agents"]["rings"] >= live["answered"], report
    # the callers streamed audio all along: nobody was cut off by the 5 s media timeout
    assert server.metric("frontdesk_media_timeouts_total") == 0, report
    assert "live - same calls: service level" in proc.stdout

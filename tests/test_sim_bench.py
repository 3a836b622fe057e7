"""sim/simbench.py: a short run of the simulator benchmark, with Ciw on the same model (``frontdesk bench-sim``)."""

from __future__ import annotations

import json

import pytest

from ivr.cli import main as cli_main

pytestmark = pytest.mark.slow


def test_bench_sim_quick_runs_both_simulators_on_the_same_model(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ciw")
    assert cli_main(["bench-sim", "--quick", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ours, ciw = data["results"]
    assert ours["simulator"] == "frontdesk" and ciw["simulator"].startswith("ciw")
    for r in (ours, ciw):
        assert 18_000 < r["calls"] < 22_000
        assert r["calls_per_second"] > 0
        # both simulate the Erlang A model: same service level and abandonment, within noise
        assert r["service_level"] == pytest.approx(data["erlang_a"]["service_level"], abs=0.03)
        assert r["abandon_rate"] == pytest.approx(data["erlang_a"]["p_abandon"], abs=0.015)
    assert data["ratio_to_ciw"] == pytest.approx(ours["calls_per_second"] / ciw["calls_per_second"])
    assert data["seconds_per_million_calls"] == pytest.approx(1e6 / ours["calls_per_second"])
    # the overloaded model keeps a long line, and the engine alone is measured in both models
    over = data["overloaded"]
    assert over["result"]["calls"] > 18_000 and over["result"]["longest_line"] == 1500
    assert over["result"]["mean_line"] > 1000
    assert over["ratio_to_steady"] == pytest.approx(over["result"]["calls_per_second"] / ours["calls_per_second"])
    for name in ("steady", "overloaded"):
        engine = data["engine"][name]
        assert engine["events"] > 0 and engine["decisions"] > engine["events"] / 2
    assert [row["waiting"] for row in data["line_cost"]] == [0, 100, 1000, 5000]
    assert all(row["events_per_second"] > 0 for row in data["line_cost"])


def test_bench_sim_refuses_bad_line_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench-sim", "--quick", "--line-lengths", "10,many"]) == 2
    assert "--line-lengths" in capsys.readouterr().err

"""The cluster benchmark (sim/live/clusterbench.py): its refusals, the quantiles from buckets, and a quick real run.

The quick run brings up the single node and two clusters (PostgreSQL, Redis,
Kamailio, one and two nodes) with tiny rates, and checks the report's shape:
every cluster target answered calls through Kamailio, and the decision-latency
phase timed events on the nodes. No figure is asserted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim.live import clusterbench

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--targets", "frontdesk,asterisk"], "--targets takes"),
        (["--targets", "cluster-1,cluster-1"], "--targets takes"),
        (["--start-rate", "50", "--max-rate", "10"], "--start-rate <= --max-rate"),
        (["--factor", "1"], "--factor > 1"),
        (["--precision", "1.5"], "--precision < 1"),
        (["--decision-rate", "0"], "--decision-rate"),
        (["--decision-seconds", "500"], "--decision-seconds"),
        (["--decision-hold", "-1"], "--decision-hold"),
        (["--sipp", "/nonexistent/sipp"], "SIPp not found at /nonexistent/sipp"),
    ],
)
def test_bad_options_are_refused_in_one_line(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert clusterbench.main(args) == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("bench-cluster: ") and err.count("\n") == 1, err


def test_quantiles_come_from_the_buckets_as_histogram_quantile_does() -> None:
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, math.inf: 100.0}
    assert clusterbench.bucket_quantile(0.5, buckets) == (pytest.approx(0.001), False)
    assert clusterbench.bucket_quantile(0.7, buckets) == (pytest.approx(0.0015), False)  # half-way into (1, 2] ms
    assert clusterbench.bucket_quantile(0.25, buckets) == (pytest.approx(0.0005), False)  # the first starts at 0
    beyond = {0.001: 1.0, 0.25: 2.0, math.inf: 10.0}
    assert clusterbench.bucket_quantile(0.99, beyond) == (0.25, True)  # above every bound: the highest, flagged
    assert clusterbench.bucket_quantile(0.5, {0.001: 0.0, math.inf: 0.0}) == (None, False)


def test_the_bench_kamailio_config_only_lifts_the_per_source_limit(tmp_path: Path) -> None:
    path = clusterbench.bench_kamailio_config(tmp_path)
    ours, theirs = path.read_text().splitlines(), clusterbench.KAMAILIO_CONFIG.read_text().splitlines()
    assert ours[0] == theirs[0] == "#!KAMAILIO"
    assert ours[1] == f"#!define PIKE_DENSITY {clusterbench.PIKE_DENSITY}"
    assert ours[2:] == theirs[1:]
    assert "#!ifndef PIKE_DENSITY" in theirs  # so the define above wins over the config's default


@pytest.mark.slow
@pytest.mark.sipp
def test_quick_bench_answers_through_kamailio_and_times_queue_decisions(tmp_path: Path, sipp: str) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "sim.live.clusterbench", "--quick", "--sipp", sipp, "--json", str(out), "--check"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        text, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its clusters, server and SIPp on SIGTERM
        text, _ = proc.communicate(timeout=60)
        pytest.fail(f"bench-cluster --quick took more than 90 s:\n{text.decode(errors='replace')}")
    log = text.decode(errors="replace")
    assert proc.returncode == 0, log  # --check: every cluster answered calls and timed decisions
    data = json.loads(out.read_text())
    assert set(data["targets"]) == {"frontdesk", "cluster-1", "cluster-2"}, log
    for name, target in data["targets"].items():
        assert target["max_clean_rate"] > 0 and target["steps"], (name, log)
        assert target["cpu_ms_per_call"] > 0, (name, log)
    assert set(data["ratios"]) == set(data["cpu_ratios"]) == {"cluster-1/frontdesk", "cluster-2/cluster-1"}, log
    assert all(v is not None and v > 0 for v in (*data["ratios"].values(), *data["cpu_ratios"].values())), log
    assert set(data["decision"]) == {"cluster-1", "cluster-2"}, log
    for name, phase in data["decision"].items():
        assert phase["successful"] == phase["callers"] > 0, (name, log)
        assert phase["count"] > 0 and phase["p50_ms"] is not None and phase["p99_ms"] is not None, (name, log)
        assert phase["buckets"]["+Inf"] == phase["count"], (name, log)
    assert "queue decision latency" in log and "cluster-2 / cluster-1" in log, log

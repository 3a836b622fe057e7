"""The SIP benchmark (sim/live/sipbench.py): its SIPp file parsing, and a quick real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim.live import sipbench

ROOT = Path(__file__).resolve().parent.parent


def test_parses_sipp_stat_and_rtt_files(tmp_path: Path) -> None:
    stat = tmp_path / "stat.csv"
    stat.write_text(
        "StartTime;CurrentTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n"
        "2026-01-01\t00:00:00.000000\t100.000000;2026-01-01\t00:00:01.000000\t101.000000;5;0;0;\n"
        "2026-01-01\t00:00:00.000000\t100.000000;2026-01-01\t00:00:02.000000\t102.500000;9;1;3;\n"
    )
    last = sipbench.parse_stat_file(stat)
    assert last["SuccessfulCall(C)"] == "9"
    assert last["Retransmissions(C)"] == "3"
    assert sipbench._epoch(last["CurrentTime"]) - sipbench._epoch(last["StartTime"]) == pytest.approx(2.5)

    rtt = tmp_path / "uac_1_rtt.csv"
    rtt.write_text("Date_ms;response_time_ms;rtd_no\n" + "".join(f"{i}.0;{i % 10};1\n" for i in range(100)))
    values = sipbench.parse_rtt_file(rtt)
    assert len(values) == 100
    assert sipbench.percentile(values, 50) == 4
    assert sipbench.percentile(values, 99) == 9
    assert sipbench.percentile([7.0], 99) == 7


@pytest.mark.slow
@pytest.mark.sipp
def test_quick_bench_reports_both_targets(tmp_path: Path, sipp: str) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.live.sipbench", "--quick", "--sipp", sipp, "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        text, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its SIPp and server on SIGTERM
        text, _ = proc.communicate(timeout=30)
        pytest.fail(f"bench-sip --quick took more than 90 s:\n{text.decode(errors='replace')}")
    log = text.decode(errors="replace")
    assert proc.returncode == 0, log
    data = json.loads(out.read_text())
    assert set(data["targets"]) == {"sipp-uas", "frontdesk"}, log
    for name in ("sipp-uas", "frontdesk"):
        assert data["targets"][name]["max_clean_rate"] > 0, log
        assert data["targets"][name]["steps"], log
    assert "ratio" in data
    assert data["ratio"] is not None and data["ratio"] > 0, log
    assert data["duration_s"] < 60, log

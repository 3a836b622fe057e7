"""The SIP benchmark (sim/live/sipbench.py): SIPp file parsing (sim/live/sipprun.py), the benchmarks' shared plumbing
(sim/benchkit.py), and a quick real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim import benchkit
from sim.live import sipprun

ROOT = Path(__file__).resolve().parent.parent


def test_parses_sipp_stat_and_rtt_files(tmp_path: Path) -> None:
    stat = tmp_path / "stat.csv"
    stat.write_text(
        "StartTime;CurrentTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n"
        "2026-01-01\t00:00:00.000000\t100.000000;2026-01-01\t00:00:01.000000\t101.000000;5;0;0;\n"
        "2026-01-01\t00:00:00.000000\t100.000000;2026-01-01\t00:00:02.000000\t102.500000;9;1;3;\n"
    )
    last = sipprun.parse_stat_file(stat)
    assert last["SuccessfulCall(C)"] == "9"
    assert last["Retransmissions(C)"] == "3"
    assert sipprun._epoch(last["CurrentTime"]) - sipprun._epoch(last["StartTime"]) == pytest.approx(2.5)

    rtt = tmp_path / "uac_1_rtt.csv"
    rtt.write_text("Date_ms;response_time_ms;rtd_no\n" + "".join(f"{i}.0;{i % 10};1\n" for i in range(100)))
    values = sipprun.parse_rtt_file(rtt)
    assert len(values) == 100
    assert sipprun.percentile(values, 50) == 4
    assert sipprun.percentile(values, 99) == 9
    assert sipprun.percentile([7.0], 99) == 7


def test_benchkit_arguments_table_ratio_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchkit.cli_args(["--", "--quick"]) == ["--quick"]  # `frontdesk bench-sip -- --quick`
    assert benchkit.cli_args(["--quick", "--"]) == ["--quick", "--"]
    assert benchkit.table(("target", "rate"), [("a", "1"), ("bb", "100")]) == [
        "target  rate",
        "------  ----",
        "a          1",
        "bb       100",
        "------  ----",
    ]
    assert benchkit.ratio(3.0, 2.0) == 1.5
    assert benchkit.ratio(3.0, 0.0) is None and benchkit.ratio(None, 2.0) is None
    assert (benchkit.verdict(True), benchkit.verdict(False), benchkit.verdict(None)) == ("MET", "NOT MET", "n/a")
    run = benchkit.BenchRun("frontdesk bench-test")
    report = run.report(machine=run.machine(extra="x"), met=False)
    out = tmp_path / "sub" / "bench.json"
    assert run.finish(report, json_path=str(out), check=True, met=False) == 1
    assert run.finish(report, json_path=None, check=False, met=False) == 0
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "frontdesk bench-test" and saved["machine"]["extra"] == "x"
    assert f"results written to {out}" in capsys.readouterr().out


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

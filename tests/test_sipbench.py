"""The SIP benchmark (sim/live/sipbench.py): SIPp file parsing (sim/live/sipprun.py), the benchmarks' shared plumbing
(sim/benchkit.py), the interleaved search, the Kamailio reference answering real calls, and a quick real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim import benchkit
from sim.live import sipbench, sipprun
from sim.live.targets import Kamailio, find_kamailio, process_cpu_seconds

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


class NoProcess:
    """A target that is never started: the scripted bench below decides its steps."""

    port = 0
    pid = None

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool:
        return True

    def cpu_seconds(self) -> float | None:
        return None


class ScriptedBench(sipbench.Bench):
    """A bench whose steps are decided by a capacity instead of SIPp: clean up to ``capacity`` calls/s."""

    def __init__(self, name: str, capacity: int, order: list[tuple[str, int]], opts: sipbench.SipBenchOptions) -> None:
        super().__init__(opts, NoProcess(name), Path("/nonexistent"))
        self.name, self.capacity, self.order = name, capacity, order

    def step(self, rate: int, *, rtt: bool = False) -> sipbench.SipStep:
        self.order.append((self.name, rate))
        run = sipprun.Run(requested=rate, calls=rate, rc=0, successful=rate, achieved=float(rate))
        if rate > self.capacity:
            run.problems.append("retransmissions")
        return sipbench.SipStep(rate, [run])


def test_targets_are_interleaved_rate_by_rate_and_each_finds_its_own_limit() -> None:
    opts = sipbench.SipBenchOptions(
        sipp="sipp", start_rate=100, max_rate=10_000, factor=2, precision=0.05, step_seconds=1, repeat=1, grace=1,
        settle=0,
    )  # fmt: skip
    order: list[tuple[str, int]] = []
    fast, slow = ScriptedBench("fast", 1000, order, opts), ScriptedBench("slow", 300, order, opts)
    sipbench.interleave([fast, slow])
    # the common rungs of the ladder go to both targets before the next rung
    assert order[:6] == [("fast", 100), ("slow", 100), ("fast", 200), ("slow", 200), ("fast", 400), ("slow", 400)]
    assert fast.best is not None and slow.best is not None
    assert 0.95 * 1000 <= fast.best.requested <= 1000
    assert 0.95 * 300 <= slow.best.requested <= 300
    assert all(s.clean == (s.requested <= b.capacity) for b in (fast, slow) for s in b.steps)


@pytest.fixture(scope="module")
def kamailio() -> str:
    path = find_kamailio()
    if path is None:
        pytest.fail("kamailio not installed: `make test` installs Debian's kamailio")
    return path


@pytest.mark.slow
@pytest.mark.sipp
@pytest.mark.parametrize("children", [1, 2])
def test_kamailio_reference_answers_every_call_and_stops_with_its_workers(
    tmp_path: Path, sipp: str, kamailio: str, children: int
) -> None:
    target = Kamailio(kamailio, tmp_path, children=children)
    target.start()
    try:
        assert target.alive()
        pid = target.pid
        run = sipprun.run_uac(sipp, target, 50, 2.0, tmp_path, rtt=True, grace=3.0)
        log = (target.log_path).read_text(errors="replace")
        assert run.clean, (run.problems, log)
        assert (run.successful, run.failed, run.retransmissions) == (100, 0, 0), log
        assert run.rtt_samples == 100  # every INVITE got its 200 OK
        assert run.target_cpu_s is not None
    finally:
        target.stop()
    assert not target.alive()
    assert process_cpu_seconds(pid, group=True) is None  # no Kamailio process of that group is left


def test_bench_refuses_unknown_targets_and_a_missing_kamailio(capsys: pytest.CaptureFixture[str]) -> None:
    assert sipbench.main(["--targets", "sipp-uas,asterisk"]) == 2
    assert "--targets takes" in capsys.readouterr().err
    assert sipbench.main(["--targets", "kamailio-1", "--kamailio", "/nonexistent/kamailio"]) == 2
    assert "Kamailio not found at /nonexistent/kamailio" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.sipp
def test_quick_bench_reports_both_targets(tmp_path: Path, sipp: str) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.live.sipbench",
            "--quick",
            "--sipp",
            sipp,
            "--json",
            str(out),
            "--targets",
            "sipp-uas,frontdesk",
        ],
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
    assert data["ratios"]["sipp-uas"] is not None and data["ratios"]["sipp-uas"] > 0, log
    assert data["cpu_ratios"]["sipp-uas"] is not None and data["cpu_ratios"]["sipp-uas"] > 0, log
    assert data["targets"]["frontdesk"]["cpu_ms_per_call"] > 0, log
    # the goal is set against Kamailio with one worker, which this run left out
    assert data["ratio_reference"] == "kamailio-1" and data["ratio"] is None and data["ratio_met"] is None, log
    assert data["duration_s"] < 60, log

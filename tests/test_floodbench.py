"""The flood benchmark (sim/live/floodbench.py): its packets, its command line, and a short real run in CI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ivr.cli import BENCHMARK_MODULES, BENCHMARKS
from ivr.sip.admission import Traffic, classify
from ivr.sip.message import Request, parse_message
from sim.live import floodbench

ROOT = Path(__file__).resolve().parent.parent


def test_the_flood_is_valid_new_invites_with_distinct_call_ids() -> None:
    packets = floodbench.flood_packets("127.0.0.2", 40001, 5060, n=50)
    ids = set()
    for data in packets:
        msg = parse_message(data)
        assert isinstance(msg, Request) and msg.method == "INVITE"
        assert classify(data) is Traffic.NEW_CALL
        ids.add(msg.call_id)
    assert len(ids) == 50
    assert BENCHMARK_MODULES["bench-flood"] == "sim.live.floodbench" and "bench-flood" in BENCHMARKS


@pytest.mark.parametrize(
    "args", [["--flood-from", "127.0.0.1"], ["--flood-from", "192.0.2.1"], ["--flood-rate", "0"], ["--after", "-1"]]
)
def test_the_command_line_refuses_what_would_leave_loopback_or_make_no_sense(args: list[str]) -> None:
    assert floodbench.main(args) == 2


@pytest.mark.slow
@pytest.mark.sipp
def test_a_short_flood_fails_no_legitimate_call(tmp_path: Path, sipp: str) -> None:
    out = tmp_path / "flood.json"
    cmd = [sys.executable, "-m", "sim.live.floodbench", "--sipp", sipp, "--json", str(out),
           "--flood-seconds", "3", "--call-rate", "20", "--after", "3"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        text, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its flooder, SIPp and server on SIGTERM
        text, _ = proc.communicate(timeout=30)
        pytest.fail(f"bench-flood took more than 90 s:\n{text.decode(errors='replace')}")
    log = text.decode(errors="replace")
    assert proc.returncode == 0, log
    result = json.loads(out.read_text())["result"]
    assert result["calls"] == 60 and result["calls_successful"] == 60, log
    assert result["calls_failed"] == 0 and result["calls_not_completed"] == 0, log
    assert result["flood_sent"] > 10000, log  # the flood did run (on a loaded machine it may fall short of 60,000)
    assert result["flood_blocks"] >= 1 and result["flood_rejected"]["blocked/drop"] > 0, log
    # the parser saw the warm-up's and the legitimate INVITEs and at most one second's cap of the flood's
    assert result["invites_parsed"] <= 10 + 60 + 100 + 20, log

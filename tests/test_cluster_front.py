"""Kamailio in front of the cluster, with the real parts: ``frontdesk cluster``, Kamailio, SIPp, PostgreSQL, Redis.

Each test starts a whole local cluster with the launcher (sim/live/cluster.py)
as a subprocess, on ports from tests/support/ports.py, bounded by ``--for``,
and stops it with SIGTERM. Callers are SIPp running
examples/cluster/caller.xml (ACK and BYE follow the Record-Route) through
Kamailio; what each node saw is read from its own ``/metrics``, what Kamailio
decided from its dispatcher state (``kamcmd dispatcher.list``) and its log.
The quick tests check that bad inputs (a port in use, a missing program, a bad
base config) stop the launcher with one line before anything starts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.agents import (
    admin_agents,
    admin_queue,
    agent_phone,
    agent_state,
    answers_then_hangs_up,
    http,
    server_config,
)
from support.callers import caller_media
from support.launcher import Launched, launch, launcher_ports
from support.ports import free_port, port_range, release
from support.server import Server
from support.sipp import SIPP_DIR, SippRun, run_callers, run_sipp
from support.waiting import wait_until

from sim.live.clusterplan import find_binaries, port_free
from sim.live.probes import dispatcher_flags

ROOT = Path(__file__).resolve().parents[1]
CALLER = str(ROOT / "examples" / "cluster" / "caller.xml")
NODES = 2
RTP_PORTS = 40  # 20 calls a node at once: plenty for these tests
LIFETIME = 100  # --for: a cluster a test forgets still stops by itself


class RunningCluster(Launched):
    """What the front's tests read besides the shared parts: Kamailio's dispatcher state and its routing log."""

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return [p for p in self.state["parts"] if p["name"].startswith("node-")]

    def dispatcher_flags(self) -> dict[str, str]:
        """Kamailio's state of each node by its SIP URI: ``AP`` in the rotation, ``IP`` out."""
        return dispatcher_flags(find_binaries().kamcmd, self.state["kamailio_ctl"])

    def calls_routed(self) -> list[tuple[str, str, float]]:
        """Kamailio's "new call" log lines: (Call-ID, node URI, when)."""
        pattern = re.compile(r"new call (\S+) to (sip:\S+) at ([\d.]+)")
        return [(m[1], m[2], float(m[3])) for m in pattern.finditer(self.kamailio_log())]


def cluster_ports() -> int:
    """Ports the launcher takes from --ports FIRST: Redis, PostgreSQL, each node's SIP and HTTP, RTP ranges."""
    return launcher_ports(NODES, RTP_PORTS)


def start_cluster(tmp_path: Path, base: dict[str, Any] | None = None, seconds: float = LIFETIME) -> RunningCluster:
    """``frontdesk cluster`` in a subprocess; returns once it printed its ready line (pids etc. in cluster.json)."""
    return RunningCluster(*launch(tmp_path, base, seconds, nodes=NODES, rtp_ports=RTP_PORTS))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path)
    try:
        yield running
    finally:
        status = running.stop()
        release(running.ports)
        release(running.sip_port)
    assert status == 0, running.report()


def call(sipp: str, cluster: RunningCluster, workdir: Path, calls: int, rate: float, pause_ms: int = 0) -> SippRun:
    return run_sipp(
        sipp,
        cluster.target,
        workdir,
        scenario=CALLER,
        calls=calls,
        rate=rate,
        timeout=30,
        extra=["-d", str(pause_ms), "-l", str(calls + 1)],
    )


def processes_under(workdir: Path) -> list[str]:
    """Live processes whose command line names ``workdir``: Redis, Kamailio and the nodes of a run do."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def gone(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# -- the launcher ------------------------------------------------------------------------


@pytest.mark.slow
def test_launcher_starts_every_part_and_stops_leaving_nothing(tmp_path: Path) -> None:
    running = start_cluster(tmp_path, seconds=4)
    try:
        names = [p["name"] for p in running.state["parts"]]
        assert names == ["postgresql", "redis", "kamailio", "node-1", "node-2"], running.report()
        pids = {p["name"]: p["pid"] for p in running.state["parts"]}
        assert all(isinstance(pid, int) and alive(pid) for pid in pids.values()), pids
        # one line per part, naming its pid and its log
        for part in running.state["parts"]:
            assert any(f"pid {part['pid']}" in line and part["log"] in line for line in running.output), part
        # Kamailio's worker processes, to be checked gone too
        workers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _pgid(int(p.name)) == pids["kamailio"] and int(p.name) != pids["kamailio"]
        ]
        assert workers, "Kamailio forks its workers into its own process group"
        # --for 4: it stops by itself, cleanly
        assert running.proc.wait(60) == 0, running.report()
        assert "cluster stopped" in running.output[-1], running.report()
        for pid in [*pids.values(), *workers]:
            wait_until(f"process {pid} gone", functools.partial(gone, pid), timeout=5)
        assert processes_under(running.workdir) == []
        ports = [running.sip_port, running.ports.start, running.ports.start + 1]
        ports += [p[key] for p in running.nodes for key in ("sip_port", "http_port")]
        for port in ports:
            wait_until(f"port {port} free again", functools.partial(port_free, port), timeout=5)
        # logs and configs stay; the database's files do not
        assert Path(running.part("kamailio")["log"]).exists()
        assert "database system is shut down" in (running.workdir / "postgresql.log").read_text()
    finally:
        running.stop()
        release(running.ports)
        release(running.sip_port)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_launcher_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    port = free_port()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", port))
            cmd = [sys.executable, "-m", "ivr.cli", "cluster", "--sip-port", str(port), "--dir", str(tmp_path)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"port {port} for Kamailio's SIP port (--sip-port) is in use" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        release(port)


def test_launcher_names_the_debian_package_of_a_missing_program(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ivr.cli", "cluster", "--dir", str(tmp_path / "run")]
    env = {**os.environ, "FRONTDESK_PG_BIN": str(tmp_path / "no-postgresql")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Debian package postgresql" in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "postgresql.log").exists(), "nothing was started"


def test_launcher_names_the_line_of_a_bad_base_config(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("sip:\n  max_calls: 0\n")
    cmd = [sys.executable, "-m", "ivr.cli", "cluster", "--config", str(base), "--dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{base}:2: sip.max_calls" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_launcher_refuses_a_negative_rolling_restart_delay(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ivr.cli", "cluster", "--rolling-restart", "-1", "--dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--rolling-restart: give a number of seconds, 0 or more" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists(), "nothing was started"


@pytest.mark.slow
def test_launcher_shows_the_log_of_a_node_that_fails_and_stops_the_rest(tmp_path: Path) -> None:
    # a prompt that is no audio file: the config is valid, but a node cannot render it and exits
    bad = tmp_path / "welcome.wav"
    bad.write_text("not audio")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"ivr": {"prompts": {"welcome": {"file": str(bad)}}}}))
    ports, sip_port = port_range(cluster_ports()), free_port()
    run = tmp_path / "run"
    try:
        cmd = [sys.executable, "-m", "ivr.cli", "cluster", "--sip-port", str(sip_port), "--ports", str(ports.start)]
        cmd += ["--rtp-ports", str(RTP_PORTS), "--dir", str(run), "--config", str(base)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "node-1: exited with status 2 before it was ready" in proc.stderr, proc.stderr
        assert "RIFF header not found" in proc.stderr, "the node's last log lines are shown"
        assert "Traceback" not in proc.stderr.split("last lines of")[0], proc.stderr
        assert not (run / "node-2" / "frontdesk.log").exists(), "the second node was never started"
        assert processes_under(run) == [], "every part started was stopped"
        for port in (sip_port, ports.start, ports.start + 1):
            assert port_free(port), port
    finally:
        release(ports)
        release(sip_port)


# -- Kamailio spreads the calls; in-dialog requests follow the Record-Route ----------------


@pytest.mark.slow
@pytest.mark.sipp
def test_calls_through_kamailio_reach_both_nodes_and_their_bye_the_node_that_answered(
    cluster: RunningCluster, sipp: str, tmp_path: Path
) -> None:
    calls = 20
    run = call(sipp, cluster, tmp_path / "sipp", calls, rate=10, pause_ms=100)
    assert run.returncode == 0 and run.successful == calls and run.failed == 0, run.report()
    per_node = {}
    for node in ("node-1", "node-2"):
        invites = cluster.metric(node, "frontdesk_sip_requests_received_total", method="INVITE")
        per_node[node] = invites
        # each node answered its INVITEs and got exactly their ACKs and BYEs: none went astray
        assert cluster.metric(node, "frontdesk_sip_responses_sent_total", method="INVITE", status="200") == invites
        assert cluster.metric(node, "frontdesk_sip_requests_received_total", method="ACK") == invites, node
        assert cluster.metric(node, "frontdesk_sip_requests_received_total", method="BYE") == invites, node
        assert cluster.metric(node, "frontdesk_sip_responses_sent_total", method="BYE", status="200") == invites
        assert cluster.metric(node, "frontdesk_calls_ended_total", outcome="completed") == invites, node
        assert cluster.metric(node, "frontdesk_calls_active") == 0, node
    assert sum(per_node.values()) == calls, per_node
    assert min(per_node.values()) >= calls // 2 - 1, f"round robin spreads the calls: {per_node}"
    # and Kamailio says the same: each call went to one node
    routed = cluster.calls_routed()
    assert len(routed) == calls, routed


# -- a node that dies leaves the rotation ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.sipp
def test_a_killed_node_leaves_the_rotation_within_5_s_and_new_calls_succeed_on_the_other(
    cluster: RunningCluster, sipp: str, tmp_path: Path
) -> None:
    victim = cluster.part("node-2")
    victim_uri = f"sip:127.0.0.1:{victim['sip_port']}"
    survivor_uri = f"sip:127.0.0.1:{cluster.part('node-1')['sip_port']}"
    assert cluster.dispatcher_flags()[victim_uri].startswith("A")
    # callers keep coming while the node dies: 10 calls/s for 6 s
    with ThreadPoolExecutor(1) as pool:
        during: Future[SippRun] = pool.submit(call, sipp, cluster, tmp_path / "during", 60, 10)
        time.sleep(1.5)
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.time()
        wait_until(
            "node-2 out of Kamailio's rotation",
            lambda: cluster.dispatcher_flags().get(victim_uri, "").startswith("I"),
            timeout=8,
            interval=0.05,
        )
        out_after = time.time() - killed
        run = during.result(timeout=60)
    sent_there = [t for _, uri, t in cluster.calls_routed() if uri == victim_uri]
    last_sent = max(sent_there) - killed
    downs = re.findall(rf"node {re.escape(victim_uri)} down at ([\d.]+)", cluster.kamailio_log())
    down = [float(t) - killed for t in downs if float(t) > killed]
    print(
        f"\nnode killed -> out of the rotation (dispatcher flags) {out_after:.2f} s; "
        f"-> last new call sent there {last_sent:.2f} s"
        + (f"; -> marked down (Kamailio's log) {down[0]:.2f} s" if down else "")
        + f"; calls during the kill: {run.successful} of 60 succeeded"
    )
    assert out_after < 5.0, cluster.kamailio_log()[-3000:]
    assert last_sent < 5.0, sent_there
    # the calls that went to the dead node were retried on the other one: at most the one
    # in the middle of its 2 ms dialog at the kill is lost
    assert run.successful >= 59 and run.successful + run.failed == 60, run.report()
    # from now on every call goes to node-1 and succeeds
    before = cluster.metric("node-1", "frontdesk_sip_requests_received_total", method="INVITE")
    after_run = call(sipp, cluster, tmp_path / "after", 20, rate=10)
    assert after_run.returncode == 0 and after_run.successful == 20, after_run.report()
    assert cluster.metric("node-1", "frontdesk_sip_requests_received_total", method="INVITE") == before + 20
    assert {uri for _, uri, _ in cluster.calls_routed()[-20:]} == {survivor_uri}


# -- a node that answers 503 -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.sipp
def test_a_node_answering_503_makes_kamailio_try_the_next_and_the_call_succeeds(sipp: str, tmp_path: Path) -> None:
    # one call per node at most: while one caller holds node X, X answers new INVITEs 503
    running = start_cluster(tmp_path, base={"sip": {"max_calls": 1}})
    try:
        with ThreadPoolExecutor(1) as pool:
            holder: Future[SippRun] = pool.submit(call, sipp, running, tmp_path / "holder", 1, 1, 8000)
            wait_until(
                "the holding call answered",
                lambda: sum(running.metric(n["name"], "frontdesk_calls_active") for n in running.nodes) == 1,
                timeout=10,
            )
            held = next(n["name"] for n in running.nodes if running.metric(n["name"], "frontdesk_calls_active") == 1)
            other = next(n["name"] for n in running.nodes if n["name"] != held)
            # one call at a time: half of them are sent to the busy node first (round robin)
            run = run_sipp(
                sipp,
                running.target,
                tmp_path / "callers",
                scenario=CALLER,
                calls=6,
                rate=2,
                timeout=30,
                extra=["-d", "0", "-l", "1"],
            )
            assert run.returncode == 0 and run.successful == 6, run.report()
            busy_503 = running.metric(held, "frontdesk_sip_responses_sent_total", method="INVITE", status="503")
            assert busy_503 >= 2, running.kamailio_log()[-3000:]
            assert running.metric(other, "frontdesk_calls_ended_total", outcome="completed") == 6
            assert len(re.findall(r"retry INVITE \S+ on", running.kamailio_log())) == busy_503
            assert holder.result(timeout=30).successful == 1
    finally:
        status = running.stop()
        release(running.ports)
        release(running.sip_port)
    assert status == 0, running.report()


# -- an agent's phone behind Kamailio ------------------------------------------------------------


def through_proxy(scenario: str) -> str:
    """A SIPp scenario of tests/sipp/ whose in-dialog requests follow the 200's Record-Route (as caller.xml's do)."""
    text = (SIPP_DIR / scenario).read_text()
    assert text.count('<recv response="200" rtd="true">') == 1, scenario
    text = text.replace('<recv response="200" rtd="true">', '<recv response="200" rtd="true" rrs="true">')
    in_dialog = re.compile(
        r"\n([ \t]*)(ACK|INFO|BYE) sip:\[service\]@\[remote_ip\]:\[remote_port\] SIP/2.0(\n[ \t]*Via: [^\n]*)"
    )
    text, n = in_dialog.subn(r"\n\1\2 [next_url] SIP/2.0\3\n\1[routes]", text)
    assert n >= 2, scenario
    return text


@pytest.mark.slow
@pytest.mark.sipp
def test_an_agent_registered_through_kamailio_takes_the_callers_of_both_nodes(sipp: str, tmp_path: Path) -> None:
    running = start_cluster(tmp_path, base=server_config({"ring_timeout": 5, "max_wait": 30, "wrap_up": 1}, ["8001"]))
    scenario = tmp_path / "queue_caller_rr.xml"
    scenario.write_text(through_proxy("queue_caller.xml"))
    # the agent's phone knows one address: Kamailio's; its REGISTER lands on one node (hash over the To URI)
    node_1 = running.part("node-1")
    front = Server(running.sip_port, node_1["http_port"], tmp_path / "unused.db", running.proc, Path(node_1["log"]))
    answered: list[str] = []

    def on_call(call: Any) -> None:
        call.answer()
        answered.append(call.request.headers["From"]["number"])
        deadline = time.monotonic() + 15
        while call.state.name == "ANSWERED" and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        with agent_phone(front, "8001", on_call) as agent, caller_media(2) as media:
            runs = []
            for number, m in zip(("4441001", "4441002"), media, strict=True):
                # one caller after the other (round robin: one on each node), 1.5 s with the agent
                runs.append(
                    run_callers(sipp, front, tmp_path / number, [(number, m.port, 4000)], scenario=str(scenario))
                )
                wait_until("the agent ready again", lambda: agent_state(front, "8001")["state"] == "ready", 10)
            for run in runs:
                assert run.returncode == 0 and run.successful == 1, run.report()
            assert [r[3] for r in agent.invites()] == ["4441001", "4441002"]
        assert answered == ["4441001", "4441002"]
        routed = {call_id: uri for call_id, uri, _ in running.calls_routed()}
        assert len(set(routed.values())) == 2, f"the two callers went to the two nodes: {routed}"
        # each node rang the phone through Kamailio (the phone's REGISTER came from there)
        rang = re.findall(r"node 127\.0\.0\.1:(\d+) sends INVITE", running.kamailio_log())
        assert sorted(map(int, rang)) == sorted(p["sip_port"] for p in running.nodes), rang
        for node in ("node-1", "node-2"):
            assert running.metric(node, "frontdesk_sip_requests_received_total", method="INVITE") == 1, node
    finally:
        status = running.stop()
        release(running.ports)
        release(running.sip_port)
    assert status == 0, running.report()


@pytest.mark.slow
@pytest.mark.sipp
def test_callers_waiting_on_both_nodes_reach_the_agent_in_arrival_order(sipp: str, tmp_path: Path) -> None:
    """One line across the cluster: callers on node 1, 2, 1 go to the one agent first come, first served."""
    running = start_cluster(tmp_path, base=server_config({"ring_timeout": 5, "max_wait": 60, "wrap_up": 1}, ["8001"]))
    scenario = tmp_path / "queue_caller_until_bye_rr.xml"
    scenario.write_text(through_proxy("queue_caller_until_bye.xml"))
    one, two = (
        Server(p["sip_port"], p["http_port"], tmp_path / "unused.db", running.proc, Path(p["log"]))
        for p in (running.part("node-1"), running.part("node-2"))
    )
    front = Server(running.sip_port, one.http_port, tmp_path / "unused.db", running.proc, one.log_path)
    talks: list[str] = []

    def waiting(node: Server) -> int:
        return int(admin_queue(node)["waiting"])

    numbers = ["4443001", "4443002", "4443003"]
    try:
        with (
            agent_phone(front, "8001", answers_then_hangs_up(talks, 1.0)),
            caller_media(3) as media,
            ThreadPoolExecutor(3) as pool,
        ):
            # the phone registered through Kamailio on one node; both replicas have the agent logged in
            for node in (one, two):
                assert admin_agents(node)["8001"]["registered"] is True
            status, body = http(two, "POST", "/agent/not-ready", agent="8001", body={"reason": "briefing"})
            assert (status, body["state"]) == (200, "not_ready"), body
            wait_until("node 1 sees the agent not ready", lambda: admin_agents(one)["8001"]["state"] == "not_ready", 3)
            runs: list[Future[SippRun]] = []
            for i, (number, node) in enumerate(zip(numbers, (one, two, one), strict=True)):
                rows = [(number, media[i].port, None)]
                runs.append(pool.submit(run_callers, sipp, node, tmp_path / number, rows, scenario=str(scenario)))
                time.sleep(1.5)
            wait_until("three callers in line", lambda: waiting(one) == 3 and waiting(two) == 3, 8)
            status, body = http(one, "POST", "/agent/ready", agent="8001")
            assert status == 200 and body["state"] in ("ready", "ringing"), body  # rung at once
            for run in runs:
                result = run.result(timeout=60)
                assert result.returncode == 0 and result.successful == 1, result.report()
            wait_until("the agent ready again", lambda: admin_agents(two)["8001"]["state"] == "ready", 5)
        assert talks == numbers  # first come, first served across the nodes
        # each node rang the agent for its own callers (through Kamailio); the queue's numbers come once
        assert running.metric("node-1", "frontdesk_queue_agent_calls_total", result="answered", node_id="node-1") == 2
        assert running.metric("node-2", "frontdesk_queue_agent_calls_total", result="answered", node_id="node-2") == 1
        answered = [
            running.metric(n, "frontdesk_queue_calls_answered_total", queue="general") for n in ("node-1", "node-2")
        ]
        assert sorted(answered) == [0, 3], answered
        assert admin_queue(one)["answered"] == admin_queue(two)["answered"] == 3
        assert sum(running.metric(n, "frontdesk_cluster_timekeeper") for n in ("node-1", "node-2")) == 1
    finally:
        status = running.stop()
        release(running.ports)
        release(running.sip_port)
    assert status == 0, running.report()


@pytest.mark.slow
@pytest.mark.sipp
def test_a_callers_asserted_identity_through_kamailio_is_not_believed_unless_from_a_trunk(
    sipp: str, tmp_path: Path
) -> None:
    """Kamailio removes a non-trunk caller's P-Asserted-Identity; the nodes then believe no From alone."""
    running = start_cluster(tmp_path, base=server_config({"ring_timeout": 5, "max_wait": 30}, []))
    text = through_proxy("ivr_hotkey.xml")
    spoofed = "      From: caller <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]IVR[call_number]\n"
    assert spoofed in text
    # a caller claiming, by an asserted identity too, to be the number whose texts it wants
    text = text.replace(spoofed, spoofed + "      P-Asserted-Identity: <sip:4449999@trunk.example>\n", 1)
    scenario = tmp_path / "ivr_hotkey_spoofed.xml"
    scenario.write_text(text)
    try:
        csv = tmp_path / "callers.csv"
        csv.write_text("SEQUENTIAL\n4449999;\n")
        run = run_sipp(
            sipp, running.target, tmp_path / "sipp", scenario=str(scenario), calls=1, rate=1, timeout=20,
            extra=["-inf", str(csv)],
        )  # fmt: skip
        assert run.returncode == 0 and run.successful == 1, run.report()
        nodes = ("node-1", "node-2")
        # key 2 asks for the hot-topic text: refused for a caller whose number is only claimed
        refused = sum(running.metric(n, "frontdesk_untrusted_caller_id_total", action="text") for n in nodes)
        assert refused == 1
        assert sum(running.metric(n, "frontdesk_text_messages_sent_total") for n in nodes) == 0
    finally:
        status = running.stop()
        release(running.ports)
        release(running.sip_port)
    assert status == 0, running.report()


# -- a rolling restart under load ------------------------------------------------------------------


def output_line(cluster: RunningCluster, text: str) -> str | None:
    return next((line for line in cluster.output if text in line), None)


@pytest.mark.slow
@pytest.mark.sipp
def test_a_rolling_restart_of_every_node_under_load_drops_no_call(
    cluster: RunningCluster, sipp: str, tmp_path: Path
) -> None:
    """SIGHUP to the launcher: each node in turn drains (503 to OPTIONS and new calls), exits 0, starts again."""
    uris = {n["name"]: f"sip:127.0.0.1:{n['sip_port']}" for n in cluster.nodes}
    pids = {n["name"]: n["pid"] for n in cluster.nodes}
    calls, rate = 250, 10  # 25 s of callers, 1 s each: some are always in progress on the node that drains
    with ThreadPoolExecutor(1) as pool:
        load: Future[SippRun] = pool.submit(
            run_sipp, sipp, cluster.target, tmp_path / "load", scenario=CALLER, calls=calls, rate=rate,
            timeout=calls / rate + 20, extra=["-d", "1000", "-l", str(calls + 1)],
        )  # fmt: skip
        time.sleep(2.0)
        os.kill(cluster.state["launcher_pid"], signal.SIGHUP)
        wait_until("the rolling restart done", lambda: output_line(cluster, "rolling restart done"), timeout=50)
        restarted_before_the_load_ended = not load.done()
        run = load.result(timeout=60)
    print("\n" + "\n".join(line for line in cluster.output if "restart" in line))
    assert run.returncode == 0 and run.failed == 0 and run.successful == calls, run.report()
    assert restarted_before_the_load_ended, "the load covered the whole restart"
    state = json.loads((cluster.workdir / "cluster.json").read_text())
    cluster.state = state
    for name, uri in uris.items():
        line = output_line(cluster, f"{name} restarted:")
        assert line is not None and "exited with status 0" in line, cluster.report()
        assert "out of the rotation" in line, f"Kamailio took {name} out at its 503 before it exited: {line}"
        new_pid = cluster.part(name)["pid"]
        assert new_pid != pids[name] and alive(new_pid)
        assert cluster.dispatcher_flags()[uri].startswith("A")
    log = cluster.kamailio_log()
    # while draining, new calls sent to a node were refused 503 and retried on the other: none was lost
    for name in uris:
        node_log = Path(cluster.part(name)["log"]).read_text(errors="replace")
        assert "drain done" in node_log and "0 call(s) hung up by the drain" in node_log, node_log[-3000:]
    assert re.search(r"node sip:127\.0\.0\.1:\d+ down at", log), log[-3000:]
    # both nodes take calls again after the restart
    after = call(sipp, cluster, tmp_path / "after", 20, rate=10)
    assert after.returncode == 0 and after.successful == 20, after.report()
    assert {uri for _, uri, _ in cluster.calls_routed()[-20:]} == set(uris.values())

"""The timekeeper killed with SIGKILL under continuous SIPp load, behind Kamailio, with the real parts.

``frontdesk cluster`` (sim/live/cluster.py, through tests/support/clusterload.py)
runs two nodes behind Kamailio with PostgreSQL and Redis, with quick cluster
timings (heartbeat 0.5 s, node timeout and lease 1.5 s). Two SIPp runs go
through Kamailio at once: short calls into the IVR (tests/sipp/cluster_ivr_caller.xml,
10 calls/s for 30 s, 1 s each) and callers who press 1 for an agent and stay
until the server hangs up (tests/sipp/cluster_queue_until_bye.xml, one every
2.05 s). The agents are pyVoIP phones registered through Kamailio; they are not
ready until the kill, so callers wait on both nodes. The node holding the
timekeeper's lease (read from Redis) is killed about 10 s in, between two
callers pressing 1, once callers of both nodes are in line; then the agents
get ready (one of them never answers its phone: a ring-no-answer, a timer
only the new timekeeper can fire).

What each SIPp call did comes from its ``<log>`` lines (Call-ID and wall-clock
time), which node got it from Kamailio's log; together they say which calls
failed and where they were.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.agents import admin_agents, admin_queue, agent_phone, answers_then_hangs_up, http, server_config
from support.clusterload import CallLine, LoadCluster, call_lines, start_cluster
from support.server import Server
from support.sipp import SippRun, run_sipp
from support.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)

pytestmark = [pytest.mark.slow, pytest.mark.sipp, pytest.mark.pyvoip]

BEAT, TIMEOUT = 0.5, 1.5  # cluster.heartbeat; cluster.node_timeout and cluster.lease
IVR_CALLS, IVR_RATE, IVR_HOLD_MS = 300, 10, 1000
QUEUE_CALLERS = 12  # one every QUEUE_EVERY_MS
# not a whole number of the IVR's 100 ms periods: Kamailio's round robin counts every new call, so a queue caller every
# 2,000 ms (20 IVR calls between, give or take one sent in the same millisecond) would go to the same node each time
QUEUE_EVERY_MS = 2050
TALK = 1.0
LIFETIME = 110  # --for: the cluster stops by itself if the test forgets it
ANSWERING = ("8001", "8002")
SILENT = "8003"  # rings and rings: its ring times out on the timekeeper's TimerFired


def base_config() -> dict[str, Any]:
    base = server_config(
        {"ring_timeout": 2, "max_wait": 60, "wrap_up": 1, "max_length": 30},
        [*ANSWERING, SILENT],
    )
    base["cluster"] = {"heartbeat": BEAT, "node_timeout": TIMEOUT, "lease": TIMEOUT}
    return base


def sipp_run(
    sipp: str, cluster: LoadCluster, workdir: Path, scenario: str, calls: int, rate: float, extra: list[str]
) -> SippRun:
    """SIPp through Kamailio, each call's ``<log>`` lines into ``workdir``/calls.log; non-INVITEs retried twice."""
    return run_sipp(
        sipp,
        cluster.target,
        workdir,
        scenario=scenario,
        calls=calls,
        rate=rate,
        timeout=70,
        extra=["-l", str(calls + 1), "-trace_logs", "-log_file", "calls.log", "-max_non_invite_retrans", "2", *extra],
    )


def by_call(lines: list[CallLine], what: str) -> dict[str, CallLine]:
    return {line.call_id: line for line in lines if line.what == what}


def test_the_timekeeper_killed_under_load_loses_only_its_own_calls(sipp: str, tmp_path: Path) -> None:
    running = start_cluster(tmp_path, base_config(), LIFETIME)
    status: int | None = None
    try:
        names = [p["name"] for p in running.state["parts"] if p["name"].startswith("node-")]
        keeper = str(wait_until("a timekeeper", lambda: running.lease_holder(), 10))
        assert keeper in names, keeper
        victim, survivor = keeper, next(n for n in names if n != keeper)
        assert running.metric(victim, "frontdesk_cluster_timekeeper") == 1
        assert running.metric(survivor, "frontdesk_cluster_timekeeper") == 0
        victim_uri, survivor_uri = running.node_uri(victim), running.node_uri(survivor)
        # the phones know Kamailio's address; their HTTP goes to the survivor (every node answers it alike)
        part = running.part(survivor)
        front = Server(running.sip_port, part["http_port"], tmp_path / "unused.db", running.proc, Path(part["log"]))
        talks: list[str] = []
        numbers = [f"44460{i:02d}" for i in range(QUEUE_CALLERS)]
        csv = tmp_path / "queue-callers.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
        with (
            agent_phone(front, ANSWERING[0], answers_then_hangs_up(talks, TALK)) as phone_1,
            agent_phone(front, ANSWERING[1], answers_then_hangs_up(talks, TALK)) as phone_2,
            agent_phone(front, SILENT, None) as silent,
            ThreadPoolExecutor(2) as pool,
        ):
            for agent in (*ANSWERING, SILENT):
                status_code, body = http(front, "POST", "/agent/not-ready", agent=agent, body={"reason": "briefing"})
                assert status_code == 200, body
            wait_until(
                "every agent not ready",
                lambda: all(a["state"] == "not_ready" for a in admin_agents(front).values()),
                5,
            )
            started = time.time()
            ivr: Future[SippRun] = pool.submit(
                sipp_run,
                sipp,
                running,
                tmp_path / "ivr",
                "cluster_ivr_caller.xml",
                IVR_CALLS,
                IVR_RATE,
                ["-d", str(IVR_HOLD_MS)],
            )
            queue: Future[SippRun] = pool.submit(
                sipp_run,
                sipp,
                running,
                tmp_path / "queue",
                "cluster_queue_until_bye.xml",
                QUEUE_CALLERS,
                1,
                ["-rp", str(QUEUE_EVERY_MS), "-inf", str(csv)],
            )
            queue_log = tmp_path / "queue" / "calls.log"

            # -- the kill: callers of both nodes in line, the last one in 0.7 to 1 s ago, the next one a second away
            def ready_to_kill() -> bool:
                joined = [line for line in call_lines(queue_log) if line.what == "joined"]
                if not joined or time.time() - started < 8:
                    return False
                routed = running.calls_routed()
                where = [routed.get(line.call_id, ("?", 0.0))[0] for line in joined]
                since = time.time() - joined[-1].at
                return where.count(victim_uri) >= 1 and where.count(survivor_uri) >= 2 and 0.7 <= since <= 1.0

            wait_until("callers of both nodes in line", ready_to_kill, 25, interval=0.02)
            assert running.lease_holder() == victim
            timers_before = running.metric(survivor, "frontdesk_cluster_timers_appended_total")
            os.kill(running.part(victim)["pid"], signal.SIGKILL)
            killed = time.time()
            wait_until("the survivor holds the lease", lambda: running.lease_holder() == survivor, 6, interval=0.02)
            moved = time.time() - killed
            routed = running.calls_routed()
            joined_before = [line for line in call_lines(queue_log) if line.what == "joined" and line.at < killed]
            in_line = {
                uri: [line.number for line in joined_before if routed[line.call_id][0] == uri]
                for uri in (victim_uri, survivor_uri)
            }
            lost = wait_until(
                "the victim's callers counted lost",
                lambda: running.metric(
                    survivor, "frontdesk_cluster_callers_lost_total", lost_node=victim, queue="general"
                ),
                6,
            )
            assert running.metric(survivor, "frontdesk_cluster_timekeeper") == 1
            assert running.metric(survivor, "frontdesk_cluster_lease_acquired_total") == 1

            # -- the agents get ready: the silent phone first, so that the head of the line rings it
            assert http(front, "POST", "/agent/ready", agent=SILENT)[0] == 200
            time.sleep(0.3)
            for agent in ANSWERING:
                assert http(front, "POST", "/agent/ready", agent=agent)[0] == 200
            queue_run = queue.result(timeout=80)
            ivr_run = ivr.result(timeout=80)
            wait_until("the agents ready again", lambda: admin_agents(front)[ANSWERING[0]]["state"] == "ready", 5)
            rings = sorted(phone_1.invites() + phone_2.invites() + silent.invites())
        timers_after = running.metric(survivor, "frontdesk_cluster_timers_appended_total")
        ring_no_answer = running.metric(survivor, "frontdesk_queue_ring_no_answer_total")
        queue_state = admin_queue(front)
        routed = running.calls_routed()
        rang_at = running.sent_by_nodes("INVITE")
        generation = running.metric(survivor, "frontdesk_cluster_generation")
    finally:
        status = running.stop()

    # -- the IVR's short calls: the failed ones were on the killed node, cut by the kill
    ivr_lines = call_lines(tmp_path / "ivr" / "calls.log")
    answered, done = by_call(ivr_lines, "answered"), by_call(ivr_lines, "done")
    suffix = next(iter(answered)).partition("-")[2]  # N-PID@HOST: this SIPp run's calls
    ivr_calls = {cid: where for cid, where in routed.items() if cid.partition("-")[2] == suffix}
    failed = sorted(set(ivr_calls) - set(done))
    # on the killed node at the kill: Kamailio sent it there (and to no other node after) before the kill
    on_victim = {cid for cid, (uri, sent) in ivr_calls.items() if uri == victim_uri and sent < killed}
    in_progress = {cid for cid in on_victim if cid not in done or done[cid].at > killed}
    # ... less those whose last answer may have been on its way as the signal landed
    surely_cut = {cid for cid in on_victim if cid not in done or done[cid].at > killed + 0.05}
    after_kill = [cid for cid, (_, sent) in ivr_calls.items() if sent > killed]
    # -- the queue's callers
    queue_lines = call_lines(tmp_path / "queue" / "calls.log")
    served = [line.number for line in queue_lines if line.what == "served"]
    gave_up = [line.number for line in queue_lines if line.what == "gave up"]
    assert all(cid in rang_at for _, _, cid, _ in rings), "every ring went through Kamailio"
    # the order the survivor rang the agents in: when Kamailio relayed each ring (one process, one clock; the
    # phones' own threads see their INVITEs late and in any order)
    first_rings = list(dict.fromkeys(number for _, number in sorted((rang_at[cid], n) for _, _, cid, n in rings)))
    joined_order = [line.number for line in queue_lines if line.what == "joined"]
    queue_calls = {cid: where for cid, where in routed.items() if cid.partition("-")[2] != suffix}
    # the caller in the IVR at the kill (it presses 1 two seconds after the last one) fails too if it was there
    doomed = [cid for cid, (uri, sent) in queue_calls.items() if uri == victim_uri and sent < killed]
    print(
        f"\ntimekeeper {victim} killed {killed - started:.1f} s into the load: lease on {survivor} after {moved:.2f} s "
        f"(bound {TIMEOUT + BEAT:g} s + 0.5); IVR calls {len(ivr_calls)} ({ivr_run.successful} ok, "
        f"{len(failed)} failed, {len(in_progress)} were in progress on {victim} at the kill, "
        f"{len(after_kill)} sent after the kill, all ok: {set(after_kill) <= set(done)}); queue callers in line at the "
        f"kill: {len(in_line[survivor_uri])} on {survivor}, {len(in_line[victim_uri])} on {victim} "
        f"(counted lost: {lost:g}); served {len(served)}, gave up {len(gave_up)}; timers appended by {survivor}: "
        f"{timers_after - timers_before:g} after the kill; ring-no-answer {ring_no_answer:g}"
    )
    assert status == 0, running.report()
    assert not generation, "the survivor's replica was rebuilt, but Redis never failed"
    assert len(ivr_calls) == IVR_CALLS and ivr_run.successful + ivr_run.failed == IVR_CALLS, ivr_run.report()
    # the lease moved within the lease's time and one heartbeat (plus the time to see it)
    assert moved <= TIMEOUT + BEAT + 0.5, moved
    # every failed IVR call was on the killed node and not over at the kill; every call sent later succeeded
    assert failed, "the kill fell between calls: nothing was in progress on the node"
    assert surely_cut <= set(failed) <= in_progress, ([(cid, ivr_calls[cid]) for cid in failed], in_progress)
    assert ivr_run.failed == len(failed), ivr_run.report()
    assert after_kill and set(after_kill) <= set(done)
    # the queue: the victim's callers left the line, counted lost with their node; the survivor's kept their place
    assert in_line[victim_uri] and in_line[survivor_uri], in_line
    assert lost == len(in_line[victim_uri]), (lost, in_line)
    assert sorted(gave_up) == sorted(in_line[victim_uri]), (gave_up, in_line)
    survivors = [n for n in joined_order if n not in in_line[victim_uri]]
    assert sorted(served) == sorted(survivors), (served, survivors)
    assert sorted(talks) == sorted(survivors), (talks, survivors)
    assert first_rings == survivors, (first_rings, survivors)  # first come, first rung, across the kill
    # timers went on, on the new timekeeper: the silent phone's ring timed out, agents left wrap-up
    assert timers_after > timers_before
    assert ring_no_answer == 1
    assert len(talks) > len(ANSWERING)  # an agent took a second caller: its wrap-up ended on a TimerFired
    assert queue_state["answered"] == len(survivors) and queue_state["waiting"] == 0, queue_state
    assert len(queue_calls) == QUEUE_CALLERS
    assert queue_run.failed == len(doomed) and queue_run.successful == QUEUE_CALLERS - len(doomed), queue_run.report()

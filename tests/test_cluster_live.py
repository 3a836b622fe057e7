"""Two real frontdesk nodes sharing one line through a real redis-server, with PostgreSQL as their store.

The nodes are ``frontdesk serve`` processes (tests/support/server.py) with a
``cluster:`` section; the callers are SIPp (tests/sipp/queue_caller_until_bye.xml:
key 1 after the welcome, then on the line until the server hangs up) and the
agent is a pyVoIP phone on the surviving node. Kamailio in front, and the
order of callers across nodes with an agent behind Kamailio, are tested in
tests/test_cluster_front.py; here the callers call the nodes directly, so
that each test decides which node a caller is on.

1. A node killed with SIGKILL while callers wait on both nodes: its callers
   leave the line (counted as lost with their node), the other node's caller
   keeps its place and reaches the agent, and when the killed node held the
   timekeeper's lease the other node takes it over.
2. A burst of callback bookings on both nodes with one node killed in the
   middle (tests/sipp/queue_book_callback.xml, as tests/test_callback_durability.py
   does on one node): every booking a caller began to hear confirmed is in the
   shared PostgreSQL, no number twice, and every caller of the other node booked.
3. Redis killed under load and started again empty: new calls keep being
   answered on both nodes, a caller on node A reaches A's agent while the
   nodes are degraded, and after the restart the callers both nodes took in
   meanwhile are served in arrival order by one agent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support.agents import admin_agents, admin_queue, agent_phone, answers_then_hangs_up, http, server_config
from support.bookings import booking_overrides, confirmation
from support.callers import CallerEar, caller_media, find_all
from support.ports import free_port
from support.redis import CLUSTER_SECRET, RedisServer
from support.server import Server, start_server
from support.sipp import SippRun, run_callers, run_sipp
from support.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)

pytestmark = [pytest.mark.pyvoip, pytest.mark.sipp, pytest.mark.slow]

QUEUE = {"ring_timeout": 5, "max_wait": 60, "wrap_up": 1, "max_length": 10}


@pytest.fixture
def start_node(tmp_path: Path, pg_url: str, redis_server: RedisServer) -> Any:
    started: list[Server] = []

    def start(node_id: str, overrides: dict[str, object] | None = None) -> Server:
        overrides = dict(overrides or server_config(QUEUE, ["8001"]))
        overrides["storage"] = {"url": pg_url}
        overrides["cluster"] = {
            "redis_url": redis_server.url,
            "node_id": node_id,
            "heartbeat": 0.5,
            "node_timeout": 1.5,
            "lease": 1.5,
            "secret": CLUSTER_SECRET,
        }
        (tmp_path / node_id).mkdir()
        node = start_server(tmp_path / node_id, overrides)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def call_in(
    pool: ThreadPoolExecutor, sipp: str, node: Server, workdir: Path, number: str, rtp_port: int
) -> Future[SippRun]:
    return pool.submit(
        run_callers,
        sipp,
        node,
        workdir,
        [(number, rtp_port, None)],
        scenario="queue_caller_until_bye.xml",
        timeout=45,
    )


def waiting(node: Server) -> int:
    return int(admin_queue(node)["waiting"])


@pytest.mark.parametrize("killed", ["timekeeper", "other"])
def test_a_node_killed_loses_its_callers_only(
    start_node: Callable[[str], Server], sipp: str, tmp_path: Path, killed: str
) -> None:
    first, second = start_node("node-a"), start_node("node-b")
    wait_until("a timekeeper", lambda: first.metric("frontdesk_cluster_timekeeper") == 1, 5)
    victim, survivor = (first, second) if killed == "timekeeper" else (second, first)
    talks: list[str] = []
    with (
        agent_phone(survivor, "8001", answers_then_hangs_up(talks, 1.0)),
        caller_media(3) as media,
        ThreadPoolExecutor(3) as pool,
    ):
        status, body = http(survivor, "POST", "/agent/not-ready", agent="8001", body={"reason": "briefing"})
        assert status == 200, body
        doomed = [call_in(pool, sipp, victim, tmp_path / f"doomed-{i}", f"444100{i}", media[i].port) for i in (0, 1)]
        time.sleep(1.0)
        kept = call_in(pool, sipp, survivor, tmp_path / "kept", "4442000", media[2].port)
        wait_until("three callers in line", lambda: waiting(survivor) == 3, 8)

        killed_at = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(5)
        wait_until("the lost node's callers out of the line", lambda: waiting(survivor) == 1, 6)
        noticed = time.monotonic() - killed_at
        wait_until("the survivor is the timekeeper", lambda: survivor.metric("frontdesk_cluster_timekeeper") == 1, 4)
        lost = survivor.metric("frontdesk_cluster_callers_lost_total", lost_node=victim_id(victim, first))
        assert lost == 2

        status, body = http(survivor, "POST", "/agent/ready", agent="8001")
        assert status == 200, body
        result = kept.result(timeout=40)
        assert result.returncode == 0 and result.successful == 1, result.report()
        for run in doomed:
            run.result(timeout=40)  # their node is gone: they fail, and must not hang the test
        # the agent's state is right again: ready after the talk and its wrap-up
        wait_until("the agent ready", lambda: admin_agents(survivor)["8001"]["state"] == "ready", 5)

    assert talks == ["4442000"]
    assert noticed < 1.5 + 0.5 + 2.0, noticed  # node_timeout + a heartbeat, and the time to apply
    q = admin_queue(survivor)
    assert (q["offered"], q["answered"], q["abandoned"]) == (3, 1, 2), q


def victim_id(victim: Server, first: Server) -> str:
    return "node-a" if victim is first else "node-b"


BOOKERS = 12  # per node


def test_a_burst_of_bookings_with_a_node_killed_loses_none_and_doubles_none(
    start_node: Callable[..., Server], sipp: str, tmp_path: Path, pg_url: str
) -> None:
    overrides, store = booking_overrides(tmp_path)
    victim, survivor = start_node("node-a", overrides), start_node("node-b", overrides)
    ears = {node: [CallerEar() for _ in range(BOOKERS)] for node in ("a", "b")}
    numbers = {node: [f"4447{node == 'a':d}{i:02d}" for i in range(BOOKERS)] for node in ("a", "b")}
    for ear in ears["a"] + ears["b"]:
        ear.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = {
                node: pool.submit(
                    run_callers,
                    sipp,
                    target,
                    tmp_path / f"burst-{node}",
                    [(n, ear.port, None) for n, ear in zip(numbers[node], ears[node], strict=True)],
                    scenario="queue_book_callback.xml",
                    rate=6,
                    timeout=30,
                )
                for node, target in (("a", victim), ("b", survivor))
            }
            time.sleep(11.0 + BOOKERS / 6 / 2)  # the middle of the bookings
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(5)
            runs["a"].result(timeout=60)  # the victim's calls fail from here on
            kept = runs["b"].result(timeout=60)
    finally:
        for ear in ears["a"] + ears["b"]:
            ear.stop()

    assert kept.returncode == 0 and kept.successful == BOOKERS, kept.report()
    booked_frames = confirmation(store)
    heard = {
        node: {n for n, ear in zip(numbers[node], ears[node], strict=True) if find_all(ear.payloads(), booked_frames)}
        for node in ("a", "b")
    }
    assert 0 < len(heard["a"]) < BOOKERS, sorted(heard["a"])  # the kill fell inside the victim's burst
    assert heard["b"] == set(numbers["b"])

    async def booked() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return [(r["number"], r["state"]) for r in await conn.fetch("SELECT number, state FROM callbacks")]
        finally:
            await conn.close()

    rows = asyncio.run(booked())
    numbers_booked = [n for n, _ in rows]
    assert len(numbers_booked) == len(set(numbers_booked)), "a number booked twice"
    assert heard["a"] | heard["b"] <= set(numbers_booked), "confirmed but lost"
    assert set(numbers_booked) <= set(numbers["a"]) | set(numbers["b"])
    assert all(state in ("booked", "due") for _, state in rows), rows


def own_callers_only(offers: list[str], prefix: str, talk: float) -> Callable[[Any], None]:
    """A phone that notes every offer's number and answers only its own node's callers (numbers from ``prefix``).

    pyVoIP answers its registrar's node only, so a ring from the other node is left ringing (it times out there).
    """
    answer = answers_then_hangs_up(offers, talk)

    def on_call(call: Any) -> None:
        number = call.request.headers["From"]["number"]
        if number.startswith(prefix):
            answer(call)
        else:
            offers.append(number)

    return on_call


def test_redis_killed_under_load_and_restarted_empty(
    start_node: Callable[..., Server], sipp: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    config = server_config(QUEUE, ["8001", "8002"])
    a, b = start_node("node-a", config), start_node("node-b", config)
    offers_a: list[str] = []  # 8001, phone on node A
    offers_b: list[str] = []  # 8002, phone on node B

    def agent(node: Server, agent_id: str, action: str) -> None:
        body = {"reason": "briefing"} if action == "not-ready" else None
        status, answer = http(node, "POST", f"/agent/{action}", agent=agent_id, body=body)
        assert status == 200, answer

    def state(agent_id: str) -> str:
        return str(admin_agents(a)[agent_id]["state"])

    with (
        agent_phone(a, "8001", own_callers_only(offers_a, "4441", 3.0)),
        agent_phone(b, "8002", own_callers_only(offers_b, "4442", 3.0)),
        caller_media(4) as media,
        ThreadPoolExecutor(6) as pool,
    ):
        wait_until("both agents in", lambda: state("8001") == "ready" == state("8002"), 5)
        agent(a, "8001", "not-ready")
        agent(b, "8002", "not-ready")
        redis_server.kill()
        wait_until(
            "both degraded",
            lambda: a.metric("frontdesk_cluster_degraded") == 1 == b.metric("frontdesk_cluster_degraded"),
            8,
        )
        load = [  # short calls into the IVR on both nodes, all through the outage and the rejoin
            pool.submit(
                run_sipp, sipp, n.sip_target, tmp_path / f"load-{i}", sn="uac", calls=24, rate=2, timeout=30,
                extra=["-d", "500"],
            )
            for i, n in enumerate((a, b))
        ]  # fmt: skip
        agent(a, "8001", "ready")  # decided on A at once: no 503 while Redis is away
        first = call_in(pool, sipp, a, tmp_path / "a-0", "4441000", media[0].port)
        wait_until("A's caller reaches A's agent", lambda: offers_a == ["4441000"], 10)
        wait_until("8001 talking", lambda: admin_agents(a)["8001"]["state"] == "talking", 5)
        agent(a, "8001", "not-ready")  # after this talk
        result = first.result(timeout=30)
        assert result.returncode == 0 and result.successful == 1, result.report()
        callers = []
        for i, (node, number) in enumerate(((b, "4442001"), (a, "4441002"), (b, "4442003")), start=1):
            callers.append(call_in(pool, sipp, node, tmp_path / f"w-{i}", number, media[i].port))
            wait_until(f"caller {number} waiting", lambda k=i: waiting(a) + waiting(b) == k, 8)
        assert (waiting(a), waiting(b)) == (1, 2)  # each node holds its own while degraded

        redis_server.start()  # empty
        wait_until(
            "both rejoined",
            lambda: a.metric("frontdesk_cluster_rejoins_total") >= 1 <= b.metric("frontdesk_cluster_rejoins_total"),
            15,
        )
        wait_until("one line again", lambda: waiting(a) == 3 == waiting(b), 5)
        assert a.metric("frontdesk_cluster_degraded") == 0 == b.metric("frontdesk_cluster_degraded")
        # the line's head is B's caller, who came before A's own: A's agent is offered B's caller first
        agent(a, "8001", "ready")
        wait_until("8001 offered the longest waiting caller", lambda: offers_a[1:] == ["4442001"], 5)
        agent(a, "8001", "not-ready")  # the ring is cancelled; the caller keeps the head of the line
        # then each node's own agent serves the line in arrival order: B's, A's, B's
        for agent_id, node, number in (("8002", b, "4442001"), ("8001", a, "4441002"), ("8002", b, "4442003")):
            wait_until(f"{agent_id} free", lambda i=agent_id: state(i) == "not_ready", 8)
            agent(node, agent_id, "ready")
            wait_until(f"{agent_id} talking with {number}", lambda i=agent_id: state(i) == "talking", 8)
            agent(node, agent_id, "not-ready")  # after this talk
        for run in callers:
            result = run.result(timeout=30)
            assert result.returncode == 0 and result.successful == 1, result.report()
        for run in load:
            result = run.result(timeout=30)
            assert result.returncode == 0 and result.successful == 24, result.report()

    assert offers_a == ["4441000", "4442001", "4441002"], offers_a
    assert offers_b == ["4442001", "4442003"], offers_b


def test_callbacks_are_given_to_agents_while_degraded(
    start_node: Callable[..., Server], redis_server: RedisServer
) -> None:
    """Without Redis there is no timekeeper: each node's dispatcher gives callbacks to its own agents meanwhile."""
    config = server_config(QUEUE, ["8001", "8002"])
    config["callbacks"] = {
        "trunk": f"sip:{{number}}@127.0.0.1:{free_port()}",  # nobody there: the test stops at the agent's ring
        "reserve_agents": 0,
        "dispatch_interval": 0.5,
        "promise_margin": 60,
    }
    a, b = start_node("node-a", config), start_node("node-b", config)

    def callbacks() -> list[dict[str, Any]]:
        status, body = http(a, "GET", "/callbacks", agent="8001")
        assert status == 200, body
        return list(body["callbacks"])

    with agent_phone(a, "8001", lambda call: None) as phone:  # rings, never answered
        wait_until("8001 in", lambda: admin_agents(a)["8001"]["state"] == "ready", 5)
        status, body = http(a, "POST", "/agent/not-ready", agent="8001", body={"reason": "briefing"})
        assert status == 200, body
        redis_server.kill()
        wait_until(
            "both degraded",
            lambda: a.metric("frontdesk_cluster_degraded") == 1 == b.metric("frontdesk_cluster_degraded"),
            8,
        )
        status, body = http(a, "POST", "/callbacks", agent="8001", body={"number": "4445003", "queue": "general"})
        assert status == 201, body  # the database is up: booking never needed Redis
        wait_until("the callback due", lambda: callbacks()[0]["state"] == "due", 5)
        status, body = http(a, "POST", "/agent/ready", agent="8001")
        assert status == 200, body
        wait_until("A's dispatcher gives it to A's agent", lambda: callbacks()[0]["state"] != "due", 8)
        assert callbacks()[0]["state"] == "offered", callbacks()
        wait_until("8001's phone rings for it", lambda: [i[3] for i in phone.invites()] == ["4445003"], 8)

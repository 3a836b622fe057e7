"""A private ``redis-server`` for a test (Debian's ``redis-server`` package): start, restart, stop.

:class:`RedisServer` runs ``redis-server`` on 127.0.0.1 on a port from
tests/support/ports.py, in a temporary directory, with nothing saved to disk
(``--save "" --appendonly no``), and returns once it answers ``PING``.
:meth:`RedisServer.kill` and :meth:`RedisServer.start` again give a Redis that
went away and came back empty on the same port (a crash of the cluster's
Redis). When ``redis-server`` is missing the tests that need it *fail* (not
skip), naming the Debian package. The ``redis_server`` fixture (one per test)
is in tests/conftest.py.

Beside it, the pieces of a test cluster: :func:`cluster_model` (the model
every node builds), :func:`cluster_settings` (quick timings) and
:func:`start_node`, a node in a process of its own, to be killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ivr.settings.cluster import ClusterSettings
from queueing.events import CallArrived
from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec
from support.ports import free_port, release

ROOT = Path(__file__).resolve().parents[2]

MISSING = (
    "redis-server is not installed: `make test` installs it (Debian package redis-server), "
    "or run `apt-get install -y redis-server`"
)


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One throwaway Redis; :attr:`url` is its ``redis://`` URL."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="frontdesk-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(MISSING)
        log = open(self.root / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.root),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _pings(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log()[-2000:]}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: everything in memory is gone (nothing was saved)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        self.kill()
        release(self.port)
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------ cluster nodes for tests/test_cluster_log.py


def cluster_model(queues: tuple[str, ...] = ("sales",), agents: int = 3, max_wait: float = 60.0) -> Model:
    """A small queue model every node of a test cluster builds the same way (no announcements, quick rings)."""
    return Model(
        queues=tuple(
            QueueSpec(
                name=name,
                max_wait=Limit(max_wait, max_wait),
                announce_every=Limit(3600.0, 3600.0),
                max_length=Limit(1000, 1000),
                ring_timeout=5.0,
                wrap_up=0.0,
            )
            for name in queues
        ),
        agents=tuple(AgentSpec(f"a{i}") for i in range(1, agents + 1)),
        surge=SurgeSpec(auto=False),
    )


#: the cluster secret of the test clusters (every node of one test shares it)
CLUSTER_SECRET = "test-cluster-secret-0123456789abcdef"


def cluster_settings(
    url: str, node: str, *, name: str = "test", beat: float = 0.2, timeout: float = 0.6, secret: str = CLUSTER_SECRET
) -> ClusterSettings:
    """Quick timings (heartbeat ``beat``, node timeout and lease ``timeout``) so that takeovers fit in a test."""
    return ClusterSettings(
        redis_url=url,
        name=name,
        node_id=node,
        heartbeat=beat,
        node_timeout=timeout,
        lease=timeout,
        secret=secret,  # type: ignore[arg-type]
    )


def start_node(
    url: str, node: str, *, calls: int = 0, name: str = "test", max_wait: float = 60.0, timeout: float = 0.6
) -> subprocess.Popen[bytes]:
    """A ClusterLog in a process of its own (``python -m support.redis``), to be killed with SIGKILL.

    It starts, appends ``calls`` CallArrived of its own (``NODE-c1``, ...), sets the key ``NAME:ready:NODE``
    once its replica applied them, and runs until it is killed (at most two minutes). Its output goes to the
    test's stderr. ``timeout`` is its node timeout and lease.
    """
    args = json.dumps(
        {"url": url, "node": node, "calls": calls, "name": name, "max_wait": max_wait, "timeout": timeout}
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, "-m", "support.redis", args], cwd=ROOT / "tests", env=env)


async def _run_node(args: dict[str, Any]) -> None:
    # imported here: the suite's conftest imports this module for RedisServer alone
    import redis.asyncio as aioredis

    from ivr.cluster.coordinator import Coordinator
    from ivr.cluster.log import ClusterLog

    model = cluster_model(max_wait=args["max_wait"])
    settings = cluster_settings(args["url"], args["node"], name=args["name"], timeout=args["timeout"])
    node_log = ClusterLog(settings, lambda: Coordinator(model), lambda *_: None)
    await node_log.start()
    for i in range(1, args["calls"] + 1):
        await node_log.request(
            CallArrived(call_id=f"{args['node']}-c{i}", queue="sales", tier="ordinary", now=time.time())
        )
    client = aioredis.Redis.from_url(args["url"])
    await client.set(f"{args['name']}:ready:{args['node']}", "1")  # its calls are applied here
    await client.aclose()
    await asyncio.sleep(120)
    await node_log.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_run_node(json.loads(sys.argv[1])))

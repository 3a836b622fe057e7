"""A Redis master, its replica and three Sentinels on loopback, from the example configs: start, kill the master, stop.

:class:`SentinelSet` copies ``examples/cluster/sentinel-master.conf``,
``sentinel-replica.conf`` and ``sentinel.conf`` (three times) into a
temporary directory with this test's ports from tests/support/ports.py,
127.0.0.1 for every address and quicker timings (down after 1 s), and starts
``redis-server`` for each (``--sentinel`` for the sentinels: Debian's
``redis-server`` package runs either). :meth:`SentinelSet.start` returns once
the replica is in sync and every sentinel knows the replica and the two other
sentinels, so a failover can happen. :meth:`SentinelSet.stop` kills every
process and removes the directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from support.ports import free_port, release
from support.redis import MISSING, ROOT

EXAMPLES = ROOT / "examples" / "cluster"
MASTER_NAME = "frontdesk"
PASSWORD = "change-me-redis"  # the example configs' password of the master and the replica


class SentinelSet:
    """``sentinel_password``: the sentinels' own ``requirepass`` (the example's commented line), or none."""

    def __init__(self, sentinel_password: str | None = None) -> None:
        self.sentinel_password = sentinel_password
        self.root = Path(tempfile.mkdtemp(prefix="frontdesk-sentinel-"))
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    @property
    def url(self) -> str:
        """The nodes' redis_url: its password and database are used, not its address (the sentinels give it)."""
        return f"redis://:{PASSWORD}@127.0.0.1:{self.master_port}/0"

    def _conf(self, example: str, name: str, port: int) -> Path:
        text = (EXAMPLES / example).read_text()
        text = re.sub(r"^port \d+$", f"port {port}", text, flags=re.M)
        text = re.sub(r"^bind .*$", "bind 127.0.0.1", text, flags=re.M)
        text = re.sub(
            r"^(replicaof|sentinel monitor frontdesk) \S+ \d+", rf"\1 127.0.0.1 {self.master_port}", text, flags=re.M
        )
        text = re.sub(r"^(sentinel down-after-milliseconds frontdesk) \d+", r"\1 1000", text, flags=re.M)
        text = re.sub(r"^(sentinel failover-timeout frontdesk) \d+", r"\1 10000", text, flags=re.M)
        if self.sentinel_password is not None:
            text = re.sub(r"^# requirepass \S+$", f"requirepass {self.sentinel_password}", text, flags=re.M)
        work = self.root / name
        work.mkdir()
        path = work / f"{name}.conf"
        path.write_text(f"{text}\ndir {work}\n")
        return path

    def _spawn(self, name: str, conf: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(MISSING)
        with open(conf.parent / "out.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [binary, str(conf), *extra], stdout=log, stderr=subprocess.STDOUT, cwd=conf.parent
            )

    def start(self, timeout: float = 20.0) -> None:
        self._spawn("master", self._conf("sentinel-master.conf", "master", self.master_port))
        self._spawn("replica", self._conf("sentinel-replica.conf", "replica", self.replica_port))
        for i, port in enumerate(self.sentinel_ports):
            self._spawn(f"sentinel{i}", self._conf("sentinel.conf", f"sentinel{i}", port), "--sentinel")
        deadline = time.monotonic() + timeout
        while not self._ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{self.log(name)[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not see the replica and each other:\n" + self.logs())
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            replica = redis.Redis(port=self.replica_port, password=PASSWORD, socket_timeout=1)
            try:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            finally:
                replica.close()
            for port in self.sentinel_ports:
                s = redis.Redis(port=port, password=self.sentinel_password, socket_timeout=1)
                try:
                    state = s.sentinel_master(MASTER_NAME)
                finally:
                    s.close()
                if state.get("num-slaves") != 1 or state.get("num-other-sentinels") != 2:
                    return False
        except redis.RedisError:
            return False
        return True

    def master_address(self) -> tuple[str, int]:
        """What the first live sentinel says the master is."""
        for port in self.sentinel_ports:
            s = redis.Redis(port=port, password=self.sentinel_password, socket_timeout=1, decode_responses=True)
            try:
                host, master = s.sentinel_get_master_addr_by_name(MASTER_NAME)
                return str(host), int(master)
            except redis.RedisError:
                continue
            finally:
                s.close()
        raise RuntimeError("no sentinel answered")

    def kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(10)

    def log(self, name: str) -> str:
        path = self.root / name / "out.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-1500:]}" for name in self.procs)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        self.procs.clear()
        for port in (self.master_port, self.replica_port, *self.sentinel_ports):
            release(port)
        shutil.rmtree(self.root, ignore_errors=True)

"""Shared fixtures: a real frontdesk server in a subprocess, free ports, SIPp, a private PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pg import pg_cluster, pg_url  # noqa: F401 - fixtures: a private PostgreSQL 15 per session

ROOT = Path(__file__).resolve().parent.parent
SIPP_DIR = Path(__file__).resolve().parent / "sipp"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


@dataclass
class Server:
    sip_port: int
    http_port: int
    db_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def sip_target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def http_get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            return bytes(r.read())

    def healthz(self) -> dict[str, object]:
        return dict(json.loads(self.http_get("/healthz")))

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.http_get("/metrics").decode().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric != name:
                continue
            pairs = dict(p.split("=", 1) for p in lab.rstrip("}").split(",") if "=" in p)
            if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s: a process a test started never outlives it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_server(tmp_path: Path, overrides: dict[str, object] | None = None) -> Server:
    """Start ``frontdesk serve`` with a config built from defaults + overrides."""
    sip_port, http_port = free_port(), free_port()
    db_path = tmp_path / "frontdesk.db"
    config: dict[str, dict[str, object]] = {
        "sip": {"listen": "127.0.0.1", "port": sip_port, "hold_time": 2.0},
        "http": {"listen": "127.0.0.1", "port": http_port},
        "storage": {"url": f"sqlite+aiosqlite:///{db_path}", "flush_interval": 0.2},
        "media": {},
    }
    for section, values in (overrides or {}).items():
        assert isinstance(values, dict)
        config.setdefault(section, {}).update(values)
    cfg_path = tmp_path / "frontdesk.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivr.cli", "serve", "--config", str(cfg_path)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = Server(sip_port, http_port, db_path, proc, log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            server.healthz()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not come up: {log_path.read_text()}")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Server] = []

    def make(overrides: dict[str, object] | None = None) -> Server:
        s = start_server(tmp_path, overrides)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory: object) -> Server:
    return server_factory()  # type: ignore[operator,no-any-return]


@pytest.fixture(scope="session")
def sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp not installed: `make test` installs Debian's sip-tester")
    return path

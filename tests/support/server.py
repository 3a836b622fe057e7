"""A real ``frontdesk serve`` in a subprocess for a test: start it, read its health and metrics, stop it.

The server listens on ports from tests/support/ports.py (given back when it
stops) and keeps its records in a SQLite file under the test's ``tmp_path``.
``/metrics`` is read with prometheus_client's own text parser.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.ports import free_port, release
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


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
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        total = 0.0
        for family in text_string_to_metric_families(self.http_get("/metrics").decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self) -> None:
        # SIGINT stops at once (SIGTERM would drain: wait for the test's calls still up, ivr/web/lifecycle.py)
        stop_process(self.proc, signal.SIGINT)
        release(self.sip_port)
        release(self.http_port)

    def terminate(self) -> None:
        """SIGTERM: the server drains (503 to new calls and OPTIONS), then exits."""
        self.proc.send_signal(signal.SIGTERM)


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """``sig``, then SIGKILL after 10 s: a process a test started never outlives it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_server(tmp_path: Path, overrides: dict[str, object] | None = None) -> Server:
    """Start ``frontdesk serve`` with a config built from defaults + overrides; returns once /healthz answers."""
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
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ivr.cli", "serve", "--config", str(cfg_path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = Server(sip_port, http_port, db_path, proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            server.healthz()
        except OSError:
            return False
        return True

    try:
        wait_until("the server's /healthz", up, timeout=20, interval=0.1)
    except AssertionError:
        server.stop()
        raise RuntimeError(f"server did not come up: {log_path.read_text()}") from None
    except BaseException:
        server.stop()
        raise
    return server

"""``frontdesk cluster`` (sim/live/cluster.py) as a test's subprocess: started, read and stopped.

Shared by tests/test_cluster_front.py and tests/support/clusterload.py (the
kill-under-load test): :func:`launch` writes the base config, starts the
launcher on ports from tests/support/ports.py, bounded by ``--for``, and
returns a :class:`Launched` once it printed its ready line; that reads each
node's ``/metrics``, Kamailio's log and the launcher's ``cluster.json``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sim.live.clusterplan import INFRA_PORTS
from support.ports import free_port, port_range, release

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 90  # the whole cluster up (PostgreSQL's initdb is most of it)


@dataclass
class Launched:
    """A running ``frontdesk cluster`` and what it wrote: ``state`` is its cluster.json."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    sip_port: int
    ports: range
    output: list[str]
    state: dict[str, Any]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def part(self, name: str) -> dict[str, Any]:
        return next(p for p in self.state["parts"] if p["name"] == name)

    def metric(self, node: str, name: str, **labels: str) -> float:
        """Sum of ``node``'s samples named ``name`` whose labels include ``labels``."""
        url = f"http://127.0.0.1:{self.part(node)['http_port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def kamailio_log(self) -> str:
        return Path(self.part("kamailio")["log"]).read_text(errors="replace")

    def report(self) -> str:
        return "\n".join(self.output) + f"\n(work directory {self.workdir})"

    def stop(self) -> int:
        """SIGTERM to the launcher (it stops every part); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(40)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


def launcher_ports(nodes: int, rtp_ports: int) -> int:
    """Ports the launcher takes from --ports FIRST: Redis, PostgreSQL, each node's SIP and HTTP, RTP ranges."""
    return INFRA_PORTS + 2 * nodes + 1 + nodes * rtp_ports


def launch(
    tmp_path: Path, base: dict[str, Any] | None, seconds: float, *, nodes: int, rtp_ports: int
) -> tuple[subprocess.Popen[bytes], Path, int, range, list[str], dict[str, Any]]:
    """Start the launcher (its files in ``tmp_path/cluster``); once ready, what :class:`Launched` is made of."""
    workdir = tmp_path / "cluster"
    ports, sip_port = port_range(launcher_ports(nodes, rtp_ports)), free_port()
    cmd = [sys.executable, "-m", "ivr.cli", "cluster", "--nodes", str(nodes), "--sip-port", str(sip_port)]
    cmd += ["--ports", str(ports.start), "--rtp-ports", str(rtp_ports), "--dir", str(workdir), "--for", str(seconds)]
    if base is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "base.yaml"
        path.write_text(yaml.safe_dump(base))
        cmd += ["--config", str(path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            output.append(line)
            if "cluster ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_SECONDS
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(40)
            release(ports)
            release(sip_port)
            pytest.fail("frontdesk cluster did not come up:\n" + "\n".join(output), pytrace=False)
    state = json.loads((workdir / "cluster.json").read_text())
    return proc, workdir, sip_port, ports, output, state

"""What one ``frontdesk cluster`` run will be: its ports, its programs, each node's config, Kamailio's node list.

Everything here is decided and checked before any process starts, so that a
bad input (a port in use, a program missing, a bad base config) stops the
launcher (sim/live/cluster.py) with one line and nothing to clean up.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivr.settings.config import ConfigError, load_config
from sim.live.postgres import MISSING as PG_MISSING
from sim.live.postgres import PG_BIN
from sim.live.targets import HOST, find_kamailio, free_port, merge_config

INFRA_PORTS = 10  # with --ports: the first ports are Redis's and PostgreSQL's, nodes' follow


class LaunchError(Exception):
    """The cluster cannot start: the message says why, in one line or with a log's last lines."""


def port_free(port: int, kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> bool:
    """Nothing bound to ``port`` on 127.0.0.1 (UDP and TCP by default)."""
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


# -- the plan: every port and file of one run -------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    node_id: str
    sip_port: int
    http_port: int
    rtp: range

    @property
    def sip(self) -> str:
        return f"{HOST}:{self.sip_port}"


@dataclass(frozen=True)
class ClusterPlan:
    workdir: Path
    sip_port: int  # Kamailio's
    redis_port: int
    pg_port: int | None  # None: a free one, found by PostgreSQL's start
    nodes: tuple[NodePlan, ...]
    secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)  # cluster.secret of this run

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"


def make_plan(
    workdir: Path, nodes: int, sip_port: int, redis_port: int | None, first_port: int | None, rtp_ports: int
) -> ClusterPlan:
    """Ports for every part: from ``first_port`` up when given, else free ones (RTP from 20000 up)."""
    if first_port is not None:
        node_base = first_port + INFRA_PORTS
        rtp_base = node_base + 2 * nodes
        rtp_base += rtp_base % 2  # RTP on even ports
        plans = tuple(
            NodePlan(
                f"node-{i + 1}",
                node_base + 2 * i,
                node_base + 2 * i + 1,
                range(rtp_base + i * rtp_ports, rtp_base + (i + 1) * rtp_ports),
            )
            for i in range(nodes)
        )
        return ClusterPlan(workdir, sip_port, redis_port or first_port, first_port + 1, plans)
    plans = tuple(
        NodePlan(f"node-{i + 1}", free_port(), free_port(), range(20000 + i * rtp_ports, 20000 + (i + 1) * rtp_ports))
        for i in range(nodes)
    )
    return ClusterPlan(workdir, sip_port, redis_port or free_port(), None, plans)


def check_ports(plan: ClusterPlan) -> None:
    """Every port the plan names is free now, or LaunchError names the first that is not and what it was for."""
    wanted: list[tuple[int, str, tuple[int, ...]]] = [
        (plan.sip_port, "Kamailio's SIP port (--sip-port)", (socket.SOCK_DGRAM, socket.SOCK_STREAM)),
        (plan.redis_port, "Redis (--redis-port)", (socket.SOCK_STREAM,)),
    ]
    if plan.pg_port is not None:
        wanted.append((plan.pg_port, "PostgreSQL", (socket.SOCK_STREAM,)))
    for n in plan.nodes:
        wanted.append((n.sip_port, f"{n.node_id}'s SIP", (socket.SOCK_DGRAM, socket.SOCK_STREAM)))
        wanted.append((n.http_port, f"{n.node_id}'s HTTP", (socket.SOCK_STREAM,)))
    seen: dict[int, str] = {}
    for port, what, kinds in wanted:
        if not 1 <= port <= 65535:
            raise LaunchError(f"port {port} for {what} is not a port (1-65535)")
        if port in seen:
            raise LaunchError(f"port {port} would serve both {seen[port]} and {what}: pick other ports")
        seen[port] = what
        if not port_free(port, kinds):
            raise LaunchError(f"port {port} for {what} is in use on {HOST}: stop what holds it or pick another")
    for n in plan.nodes:
        if n.rtp.start < 1024 or n.rtp.stop > 65536:
            raise LaunchError(f"{n.node_id}'s RTP ports {n.rtp.start}-{n.rtp.stop - 1} are out of 1024-65535")


@dataclass(frozen=True)
class Binaries:
    kamailio: str
    kamcmd: str
    redis: str


def find_binaries() -> Binaries:
    """The programs the cluster needs, or LaunchError naming the Debian package of the first one missing."""
    kamailio = find_kamailio()
    kamcmd = shutil.which("kamcmd") or next((p for p in ("/usr/sbin/kamcmd",) if os.access(p, os.X_OK)), None)
    redis = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if kamailio is None or kamcmd is None:
        raise LaunchError("kamailio not found: install the Debian package kamailio (apt-get install -y kamailio)")
    if redis is None:
        raise LaunchError("redis-server not found: install the Debian package redis-server")
    if not (PG_BIN / "initdb").exists():
        raise LaunchError(PG_MISSING)
    return Binaries(kamailio, kamcmd, redis)


LOCAL_DRAIN_SECONDS = 30.0  # a local cluster's nodes drain for this long at most, unless BASE.yaml says otherwise


def node_config(plan: ClusterPlan, node: NodePlan, base: dict[str, Any], database_url: str) -> dict[str, Any]:
    """One node's config: run defaults, then ``base``, then what this run decides (ports, cluster, storage)."""
    defaults: dict[str, Any] = {
        "media": {"recordings_dir": str(plan.workdir / node.node_id / "recordings")},
        "log_level": "info",
        # a rolling restart (SIGHUP to the launcher) waits this long at most for a node's calls
        "shutdown": {"drain_seconds": LOCAL_DRAIN_SECONDS},
    }
    trusted = [str(n) for n in base.get("security", {}).get("trusted_networks", [])]
    if f"{HOST}/32" not in trusted:
        trusted.append(f"{HOST}/32")  # Kamailio: every caller arrives from its address
    decided: dict[str, Any] = {
        "sip": {"listen": HOST, "port": node.sip_port},
        "http": {"listen": HOST, "port": node.http_port},
        "media": {"rtp_port_min": node.rtp.start, "rtp_port_max": node.rtp.stop - 1},
        "storage": {"url": database_url},
        "cluster": {
            "redis_url": plan.redis_url,
            "node_id": node.node_id,
            "advertise_sip": node.sip,
            "secret": plan.secret,
        },
        # Kamailio relays every caller but asserts only its trunks' numbers: From alone is not believed
        "security": {"trusted_networks": trusted, "caller_id": {"require_asserted_identity": True}},
    }
    return merge_config(merge_config(defaults, base), decided)


def dispatcher_list(nodes: tuple[NodePlan, ...]) -> str:
    """Kamailio's list of the nodes (examples/cluster/dispatcher.list shows the format).

    Flags 9 (inactive, probing): a node enters the rotation at its first answer
    to Kamailio's OPTIONS, so no call goes to a node that is still starting.
    """
    head = "# setid destination flags priority attributes: the cluster's nodes (written by frontdesk cluster)\n"
    return head + "".join(f"1 sip:{n.sip} 9 0 duid={n.node_id}\n" for n in nodes)


def read_base(path: str | None) -> dict[str, Any]:
    """``--config BASE.yaml`` as data, checked as a config of its own (errors name its lines)."""
    if path is None:
        return {}
    try:
        load_config(path)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: a config is a mapping of sections")
    return data

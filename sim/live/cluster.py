"""``frontdesk cluster``: a whole cluster on this machine's loopback, for trying it out and for the tests.

It starts, in this order, a private PostgreSQL (the nodes' shared durable
store), a ``redis-server`` (their shared line), Kamailio in front
(examples/cluster/kamailio.cfg, with a dispatcher list written for this run)
and ``--nodes`` ``frontdesk serve`` processes, each with a generated config
(own SIP, HTTP and RTP ports, a ``cluster:`` section, ``storage.url`` on the
shared database) laid over ``--config BASE.yaml``. It waits until each part
answers (PING, ``/healthz``, every node active in Kamailio's dispatcher and
OPTIONS through Kamailio answered by the nodes), prints one line per part,
and runs until Ctrl-C, SIGTERM or ``--for`` seconds; then it stops everything
in reverse order: nodes (SIGINT: at once), Kamailio, Redis, PostgreSQL.

SIGHUP (or ``--rolling-restart AFTER``) restarts every node in turn, the way
a deployment would: SIGTERM (the node drains: Kamailio takes it out at its
503 to OPTIONS, its calls end), wait for its exit, start it again with the
same config, wait until Kamailio has it back in the rotation, then the next.
One line per node says how long each step took.

A node that dies while the cluster runs is reported and the rest go on (that
is what a cluster is for); if Kamailio, Redis or PostgreSQL dies, everything
stops. Every part's log, the generated configs and ``cluster.json`` (ports,
pids, logs of every part, for scripts and tests) stay in ``--dir``.

The module is long because every part's start, watch, restart and stop
belong together: each relies on how the others leave the parts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from ivr.settings.config import ConfigError, load_config
from sim.live.clusterplan import (
    Binaries,
    ClusterPlan,
    LaunchError,
    NodePlan,
    check_ports,
    dispatcher_list,
    find_binaries,
    make_plan,
    node_config,
    read_base,
)
from sim.live.postgres import LocalPostgres
from sim.live.probes import dispatcher_flags, redis_pings, sip_options
from sim.live.targets import HOST, free_port

KAMAILIO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "cluster" / "kamailio.cfg"
SHARED_MEMORY_MB = 256  # transactions wait in shared memory for their timers; 64 MB runs short in a load test
NODE_START_SECONDS = 60.0  # a first start renders the prompts (espeak-ng)
PART_START_SECONDS = 20.0
NODE_STOP_SECONDS = 15.0  # a drained node's way out (listeners, the lease, the database) beyond its drain limit


class Stop(Exception):
    """SIGTERM (or SIGINT) asked the cluster to stop."""


# -- small helpers ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGTERM when the launcher dies, so that no part outlives it (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not written)"
    return "\n".join("    " + ln for ln in text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (to the whole process group with ``group``)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if group:  # workers the main process left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def exit_text(code: int) -> str:
    return f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"status {code}"


@dataclass(frozen=True)
class Restart:
    """One node's restart, seconds from its SIGTERM."""

    node: str
    code: int | None  # its exit status (None: it was not running)
    out: float | None  # out of Kamailio's rotation (its 503 to OPTIONS); None: never seen out
    exited: float
    back: float  # in the rotation again

    def line(self) -> str:
        out = f"out of the rotation {self.out:.1f} s, " if self.out is not None else "never out of the rotation, "
        status = "not running" if self.code is None else f"exited with {exit_text(self.code)}"
        return f"{self.node} restarted: {out}{status} {self.exited:.1f} s, back in the rotation {self.back:.1f} s"


# -- the parts ----------------------------------------------------------------------------


@dataclass
class Part:
    """One running process of the cluster, as printed and as written to cluster.json."""

    name: str
    address: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    pid_of: Callable[[], int | None] | None = None

    @property
    def pid(self) -> int | None:
        if self.pid_of is not None:
            return self.pid_of()
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def line(self) -> str:
        return f"{self.name:<10}  {self.address:<52}  pid {self.pid}  log {self.log}"


def _spawn(cmd: list[str], log: Path, cwd: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher only: it stops the parts in order
            preexec_fn=_die_with_parent,
        )


def _wait(what: str, ready: Callable[[], bool], part: Part | None, timeout: float) -> None:
    """Poll ``ready`` until true; LaunchError (with the part's log) when the part exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        code = part.exited() if part is not None else None
        if code is not None:
            log = f"; last lines of {part.log}:\n{tail(part.log)}" if part is not None else ""
            raise LaunchError(f"{what}: exited with {exit_text(code)} before it was ready{log}")
        if time.monotonic() > deadline:
            log = f"; last lines of {part.log}:\n{tail(part.log)}" if part is not None else ""
            raise LaunchError(f"{what}: not ready after {timeout:.0f} s{log}")
        time.sleep(0.1)


class LocalCluster:
    """The parts of one run, started by :meth:`start` and stopped, newest first, by :meth:`stop`."""

    def __init__(
        self,
        plan: ClusterPlan,
        base: dict[str, Any],
        binaries: Binaries,
        *,
        shm_mb: int = SHARED_MEMORY_MB,
        kamailio_config: Path = KAMAILIO_CONFIG,
    ) -> None:
        self.plan = plan
        self.base = base
        self.binaries = binaries
        self.shm_mb = shm_mb
        self.kamailio_config = kamailio_config
        self.parts: list[Part] = []
        self.postgres: LocalPostgres | None = None
        self.ctl = f"unix:{plan.workdir / 'kamailio' / 'kamailio_ctl'}"
        self.reported: set[str] = set()  # parts whose exit was reported
        self.restart_wanted = False  # set by SIGHUP: watch() restarts every node in turn

    # -- start

    def start(self, say: Callable[[str], None]) -> None:
        self.plan.workdir.mkdir(parents=True, exist_ok=True)
        url = self._start_postgres()
        self._start_redis()
        self._start_kamailio()
        self._start_nodes(url)
        self._wait_rotation()
        self.write_state()
        for part in self.parts:
            say(part.line())

    def _start_postgres(self) -> str:
        pg_port = self.plan.pg_port
        self.postgres = LocalPostgres(
            (lambda: pg_port) if pg_port is not None else free_port,
            keep_log=self.plan.workdir / "postgresql.log",
        )
        log = self.plan.workdir / "postgresql.log"
        part = Part("postgresql", "", log, pid_of=lambda: self.postgres.pid if self.postgres else None)
        self.parts.append(part)  # stopped by stop() even if its start fails half-way
        try:
            self.postgres.start(attempts=1 if pg_port is not None else 5)
            url = self.postgres.url("frontdesk")
            self.postgres.psql("CREATE DATABASE frontdesk")
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            raise LaunchError(f"postgresql did not start: {str(exc).strip()}") from None
        part.address = url
        return url

    def _start_redis(self) -> None:
        root = self.plan.workdir / "redis"
        root.mkdir(parents=True, exist_ok=True)
        port = self.plan.redis_port
        cmd = [self.binaries.redis, "--port", str(port), "--bind", HOST, "--dir", str(root)]
        cmd += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        part = Part("redis", self.plan.redis_url, root / "redis.log", _spawn(cmd, root / "redis.log", root))
        self.parts.append(part)
        _wait("redis", lambda: redis_pings(port), part, PART_START_SECONDS)

    def _start_kamailio(self) -> None:
        root = self.plan.workdir / "kamailio"
        root.mkdir(parents=True, exist_ok=True)
        listing = root / "dispatcher.list"
        listing.write_text(dispatcher_list(self.plan.nodes))
        port = self.plan.sip_port
        cmd = [
            self.binaries.kamailio,
            "-f", str(self.kamailio_config),
            "-DD", "-E",
            "-m", str(self.shm_mb),
            "-Y", str(root),
            "-P", str(root / "kamailio.pid"),
            "-A", f"LISTEN_UDP=udp:{HOST}:{port}",
            "-A", f"LISTEN_TCP=tcp:{HOST}:{port}",
            "-A", f'DISPATCHER_LIST="{listing}"',
            "-A", f'CTL_SOCKET="{self.ctl}"',
        ]  # fmt: skip
        part = Part(
            "kamailio", f"sip:{HOST}:{port} (udp, tcp)", root / "kamailio.log", _spawn(cmd, root / "kamailio.log", root)
        )
        self.parts.append(part)
        _wait("kamailio", lambda: sip_options(port, user=None, timeout=0.3) == 200, part, PART_START_SECONDS)

    def _start_nodes(self, database_url: str) -> None:
        nodes = []
        for node in self.plan.nodes:
            root = self.plan.workdir / node.node_id
            root.mkdir(parents=True, exist_ok=True)
            config = root / "frontdesk.yaml"
            config.write_text(
                f"# {node.node_id} of the cluster started by `frontdesk cluster`\n"
                + yaml.safe_dump(
                    node_config(self.plan, node, self.base, database_url),
                    sort_keys=False,
                )
            )
            try:
                load_config(config)
            except ConfigError as exc:
                raise LaunchError(str(exc)) from None
            nodes.append((node, config, root / "frontdesk.log"))
        # the first node alone: it creates the database schema and renders the prompts for everyone
        first, rest = nodes[:1], nodes[1:]
        for batch in (first, rest):
            started = [self._start_node(node, config, log) for node, config, log in batch]
            for part in started:
                healthy = functools.partial(self._healthy, int(part.extra["http_port"]))
                _wait(part.name, healthy, part, NODE_START_SECONDS)

    def _start_node(self, node: NodePlan, config: Path, log: Path) -> Part:
        cmd = [sys.executable, "-m", "ivr.cli", "serve", "--config", str(config)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        address = f"sip:{node.sip}  http://{HOST}:{node.http_port}  rtp {node.rtp.start}-{node.rtp.stop - 1}"
        part = Part(node.node_id, address, log, _spawn(cmd, log, Path.cwd(), env=env))
        part.extra = {"sip_port": node.sip_port, "http_port": node.http_port, "config": str(config)}
        self.parts.append(part)
        return part

    @staticmethod
    def _healthy(http_port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{http_port}/healthz", timeout=1) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def dispatcher_flags(self) -> dict[str, str]:
        return dispatcher_flags(self.binaries.kamcmd, self.ctl)

    def _in_rotation(self, uris: set[str]) -> bool:
        flags = self.dispatcher_flags()
        return all(flags.get(u, "").startswith("A") for u in uris)

    def _wait_rotation(self) -> None:
        """Every node in Kamailio's rotation, and OPTIONS through Kamailio answered (round robin: by each node)."""
        kamailio = next(p for p in self.parts if p.name == "kamailio")
        uris = {f"sip:{n.sip}" for n in self.plan.nodes}
        in_rotation = functools.partial(self._in_rotation, uris)
        _wait("kamailio's dispatcher (every node active)", in_rotation, kamailio, PART_START_SECONDS)
        for _ in self.plan.nodes:
            _wait("OPTIONS through kamailio", lambda: sip_options(self.plan.sip_port) == 200, kamailio, 10)

    # -- restarts

    def restart_node(self, name: str) -> Restart:
        """SIGTERM node ``name`` (it drains), wait for its exit, start it again, wait until Kamailio has it back."""
        index, part = next((i, p) for i, p in enumerate(self.parts) if p.name == name)
        node = next(n for n in self.plan.nodes if n.node_id == name)
        uri = f"sip:{node.sip}"
        config = Path(part.extra["config"])
        start = time.monotonic()
        out: float | None = None
        code = part.exited()
        if code is None and part.proc is not None:
            part.proc.send_signal(signal.SIGTERM)
            limit = load_config(config).shutdown.drain_seconds + NODE_STOP_SECONDS
            while (code := part.exited()) is None:
                if out is None and not self.dispatcher_flags().get(uri, "A").startswith("A"):
                    out = time.monotonic() - start
                if time.monotonic() - start > limit:
                    stop_process(part.proc, grace=0)
                    raise LaunchError(f"{name}: still running {limit:.0f} s after SIGTERM; killed")
                time.sleep(0.1)
        else:
            code = None
        exited = time.monotonic() - start
        # Kamailio must have seen it go (else "back in the rotation" below would hold at once): a drained node
        # lingers long enough for a probe to see its 503; a node that was not running misses its probes
        wait_out = time.monotonic() + PART_START_SECONDS
        while out is None and time.monotonic() < wait_out:
            if not self.dispatcher_flags().get(uri, "A").startswith("A"):
                out = time.monotonic() - start
            else:
                time.sleep(0.1)
        new = self._start_node(node, config, part.log)  # appended last: stop() finds it whatever happens next
        self.parts.remove(new)
        self.parts[index] = new
        self.reported.discard(name)
        _wait(name, functools.partial(self._healthy, node.http_port), new, NODE_START_SECONDS)
        _wait(f"{name} back in kamailio's rotation", lambda: self._in_rotation({uri}), new, PART_START_SECONDS)
        self.write_state()
        return Restart(name, code, out, exited, time.monotonic() - start)

    def rolling_restart(self, say: Callable[[str], None]) -> list[Restart]:
        """Every node in turn (the next one only once Kamailio has the last one back): no call is dropped."""
        names = [p.name for p in self.parts if p.name.startswith("node-")]
        say(f"rolling restart of {len(names)} node(s)")
        done = []
        for name in names:
            done.append(self.restart_node(name))
            say(done[-1].line())
        say("rolling restart done")
        return done

    def write_state(self) -> None:
        state = {
            "sip": f"{HOST}:{self.plan.sip_port}",
            "launcher_pid": os.getpid(),  # SIGHUP to it restarts every node in turn
            "redis_url": self.plan.redis_url,
            "kamailio_ctl": self.ctl,
            "parts": [
                {"name": p.name, "address": p.address, "pid": p.pid, "log": str(p.log), **p.extra} for p in self.parts
            ],
        }
        (self.plan.workdir / "cluster.json").write_text(json.dumps(state, indent=2) + "\n")

    # -- run and stop

    def watch(self, say: Callable[[str], None], seconds: float | None, restart_after: float | None = None) -> int:
        """Run until ``seconds`` pass (None: until stopped); 1 when Kamailio, Redis or PostgreSQL died.

        A rolling restart runs when SIGHUP asked for one, and once ``restart_after`` seconds in.
        """
        now = time.monotonic()
        deadline = None if seconds is None else now + seconds
        restart_at = None if restart_after is None else now + restart_after
        reported = self.reported
        while deadline is None or time.monotonic() < deadline:
            if restart_at is not None and time.monotonic() >= restart_at:
                restart_at, self.restart_wanted = None, True
            if self.restart_wanted:
                self.restart_wanted = False
                self.rolling_restart(say)
            for part in self.parts:
                code = part.exited()
                if part.name == "postgresql" and part.pid is None:
                    code = -1
                if code is None or part.name in reported:
                    continue
                reported.add(part.name)
                if part.name.startswith("node-"):
                    left = sum(1 for p in self.parts if p.name.startswith("node-") and p.exited() is None)
                    say(f"{part.name} exited with {exit_text(code)} (log {part.log}); {left} node(s) go on")
                else:
                    say(f"{part.name} exited ({part.log}):\n{tail(part.log)}\nstopping the cluster")
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """Nodes (all at once), then Kamailio, Redis, PostgreSQL: nothing of this run is left running."""
        nodes = [p for p in self.parts if p.name.startswith("node-")]
        for p in nodes:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGINT)  # at once: the whole cluster goes, no node is left to take calls
        for p in nodes:
            stop_process(p.proc, grace=10)
        for p in reversed(self.parts):
            if p.name == "kamailio":
                stop_process(p.proc, grace=5, group=True)
            elif p.name == "redis":
                stop_process(p.proc, grace=5)
            elif p.name == "postgresql" and self.postgres is not None:
                self.postgres.stop()


@contextlib.contextmanager
def _stop_signals(cluster: LocalCluster) -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stop` in the main thread while the cluster starts or runs; SIGHUP asks
    for a rolling restart."""

    def handler(signum: int, frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    def restart(signum: int, frame: object) -> None:
        cluster.restart_wanted = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, restart)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _ignore_signals() -> None:
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk cluster",
        description="Run a local frontdesk cluster on 127.0.0.1: PostgreSQL, Redis, Kamailio and N nodes.",
    )
    p.add_argument("--nodes", type=int, default=2, help="frontdesk nodes behind Kamailio (default 2)")
    p.add_argument("--sip-port", type=int, default=5060, help="Kamailio's UDP and TCP port (default 5060)")
    p.add_argument("--redis-port", type=int, help="Redis's port (default: a free one)")
    p.add_argument(
        "--ports",
        type=int,
        metavar="FIRST",
        help="take the other ports (Redis, PostgreSQL, nodes, RTP) from FIRST up (default: free ones)",
    )
    p.add_argument("--rtp-ports", type=int, default=1000, help="RTP ports per node (default 1000: 500 calls)")
    p.add_argument("--config", "-c", metavar="BASE.yaml", help="config laid under the generated one (agents, queues)")
    p.add_argument("--dir", type=Path, help="where logs, configs and cluster.json go (default: a new temp dir)")
    p.add_argument("--for", dest="seconds", type=float, metavar="SECONDS", help="stop by itself after this long")
    p.add_argument(
        "--rolling-restart",
        type=float,
        metavar="AFTER",
        help="AFTER seconds in, restart every node in turn (drain, exit, start, back in Kamailio's rotation); "
        "SIGHUP does the same at any time",
    )
    p.add_argument(
        "--kamailio-config",
        type=Path,
        default=KAMAILIO_CONFIG,
        metavar="CFG",
        help="Kamailio's config (default examples/cluster/kamailio.cfg; it gets the same -A defines)",
    )
    p.add_argument("--shm-mb", type=int, default=SHARED_MEMORY_MB, help="Kamailio's shared memory, MB")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def say(text: str) -> None:
        print(text, flush=True)

    def fail(text: str) -> int:
        print(f"frontdesk cluster: {text}", file=sys.stderr, flush=True)
        return 2

    if not 1 <= args.nodes <= 32:
        return fail(f"--nodes {args.nodes}: give 1 to 32")
    if args.rtp_ports < 4 or args.rtp_ports % 2:
        return fail(f"--rtp-ports {args.rtp_ports}: give an even number, at least 4")
    if not args.kamailio_config.is_file():
        return fail(f"--kamailio-config {args.kamailio_config}: no such file")
    if args.seconds is not None and args.seconds <= 0:
        return fail("--for: give a positive number of seconds")
    if args.rolling_restart is not None and args.rolling_restart < 0:
        return fail("--rolling-restart: give a number of seconds, 0 or more")
    workdir = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="frontdesk-cluster-"))
    try:
        if len(str(workdir)) > 80:  # Kamailio's control socket lives there: a Unix socket path has 107 bytes at most
            raise LaunchError(f"--dir {workdir}: give a path of at most 80 characters")
        binaries = find_binaries()
        base = read_base(args.config)
        plan = make_plan(workdir, args.nodes, args.sip_port, args.redis_port, args.ports, args.rtp_ports)
        check_ports(plan)
    except LaunchError as exc:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        return fail(str(exc))
    cluster = LocalCluster(plan, base, binaries, shm_mb=args.shm_mb, kamailio_config=args.kamailio_config)
    status = 0
    try:
        with _stop_signals(cluster):
            cluster.start(say)
            say(
                f"frontdesk cluster ready: {args.nodes} node(s) behind sip:{HOST}:{plan.sip_port}; "
                f"state in {workdir / 'cluster.json'}; "
                + (f"stops in {args.seconds:g} s" if args.seconds else "Ctrl-C stops it")
                + f"; kill -HUP {os.getpid()} restarts every node in turn"
            )
            status = cluster.watch(say, args.seconds, args.rolling_restart)
    except LaunchError as exc:
        print(f"frontdesk cluster: {exc}", file=sys.stderr, flush=True)
        status = 1
    except Stop as exc:
        say(f"{exc}: stopping")
    finally:
        _ignore_signals()  # a second Ctrl-C must not leave half the parts running
        cluster.stop()
        say(f"frontdesk cluster stopped; logs in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())

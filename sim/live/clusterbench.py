"""Cluster benchmark: one node against one and two cluster nodes behind Kamailio, and a queue decision's latency.

``frontdesk bench-cluster [options]`` (or ``python -m sim.live.clusterbench``)
measures, in one run, three targets on 127.0.0.1:

- ``frontdesk``: one node on its defaults, SIPp straight to it (bench-sip's
  ``frontdesk`` target, SQLite): the reference;
- ``cluster-1``: Kamailio (examples/cluster/kamailio.cfg) in front of one
  cluster node, with its Redis and PostgreSQL (``LocalCluster`` of
  sim/live/cluster.py, the parts ``frontdesk cluster`` runs);
- ``cluster-2``: the same with two nodes.

Phase 1 is bench-sip's (sim/live/sipbench.py, reused): the call rate steps
up a geometric ladder, then bisects to the highest clean rate (no failed
call, no retransmission, every call completed, 90% of the rate offered),
rung by rung on every target in turn; a target is restarted after a dirty
run. Calls to the cluster targets follow Kamailio's Record-Route
(examples/cluster/caller.xml; SIPp's ``-sn uac`` ignores it), calls to the
single node are ``-sn uac``; both hang up at once (``-d 0``). At 80% of each
target's own clean rate it reports p50/p99 INVITE -> 200 OK (SIPp's RTD,
whole ms) and the CPU time per call of the target's processes from /proc:
the node for ``frontdesk``; the nodes, Kamailio (all its processes), Redis
and PostgreSQL (the postmaster and its backends) for a cluster.

Phase 2, per cluster target: callers through Kamailio join the queue (the
demo IVR's key 1, sim/scenarios/cluster_queue_caller.xml) at
``--decision-rate`` for ``--decision-seconds`` and hang up after
``--decision-hold`` ms in line (no agent is logged in, and the nodes'
automatic surge switch is off so that nobody is peak-shaved: each caller is
two queue events, joining and hanging up); meanwhile every node counts, for each event
it submits to the shared log (the caller joining, hanging up), the time until
its own replica applied the entry (``frontdesk_cluster_decision_seconds``,
ivr/cluster/log.py). The histograms of every node's ``/metrics`` are read
before and after the phase (prometheus_client's parser); the difference,
summed over the nodes, gives the count and the p50/p99 by linear
interpolation inside the bucket that holds the rank (as PromQL's
``histogram_quantile``; a rank in the +Inf bucket is shown as "> 250").
A single node decides in-process: there this latency is 0.

Every process started here is stopped on the way out (Ctrl-C and SIGTERM
included). The report gives cluster-1 / frontdesk and cluster-2 / cluster-1
as ratios of the highest clean rates and of the CPU per call.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from sim.benchkit import (
    BenchRun,
    cli_args,
    executable,
    log,
    ratio,
    refuse,
    shown,
    sigterm_unwinds,
    sipp_bench_options,
    table,
    work_directory,
)
from sim.live.cluster import KAMAILIO_CONFIG, LocalCluster
from sim.live.clusterplan import Binaries, LaunchError, check_ports, find_binaries, make_plan
from sim.live.sipbench import LATENCY_LOAD, SipBenchOptions, TargetResult, measure, result_notes, results_table
from sim.live.sipprun import MIN_RATE_SHARE, UAC_BUILTIN, Run, UacScenario, run_uac
from sim.live.targets import HOST, Frontdesk, Target, event_loop_name, free_port, process_cpu_seconds, sipp_version

ROOT = Path(__file__).resolve().parents[2]
CALLER = ROOT / "examples" / "cluster" / "caller.xml"
CALLER_TIMEWAIT = 0.5  # caller.xml's <timewait> after the BYE's 200: the last call ends that much later
QUEUE_CALLER = ROOT / "sim" / "scenarios" / "cluster_queue_caller.xml"
TARGETS = ("frontdesk", "cluster-1", "cluster-2")
DECISION_METRIC = "frontdesk_cluster_decision_seconds"
RTP_PORTS = 1000  # per node: 500 calls at once
KEY_1_AFTER = 2.8  # seconds from the answer to the caller's key 1 (the scenario's pause)
# The load generator on 127.0.0.1 is a trunk: capacity is measured without Kamailio's per-source flood limit
# (pike, 1,000 requests per 2 s by default: about 330 calls/s of INVITE, ACK and BYE).
PIKE_DENSITY = 1_000_000
# the nodes log as bench-sip's frontdesk target does; with no agent logged in the automatic surge switch would
# turn on and peak-shave the decision phase's callers at once: off, they wait in line and hang up
T = TypeVar("T", int, float)
NODE_CONFIG: dict[str, Any] = {"log_level": "warning", "surge": {"auto": False}}


# --------------------------------------------------------------------------- the cluster as a target


def tree_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of ``pid`` and its children (the postmaster and its backends)."""
    if pid is None:
        return None
    total = process_cpu_seconds(pid)
    if total is None:
        return None
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = path.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def bench_kamailio_config(workdir: Path) -> Path:
    """examples/cluster/kamailio.cfg with pike's per-source limit raised out of the way (its #!ifndef lets us)."""
    lines = KAMAILIO_CONFIG.read_text().splitlines(keepends=True)
    path = workdir / "kamailio-bench.cfg"
    path.write_text(lines[0] + f"#!define PIKE_DENSITY {PIKE_DENSITY}\n" + "".join(lines[1:]))
    return path


class ClusterTarget:
    """``nodes`` cluster nodes behind Kamailio, with their Redis and PostgreSQL; ``port`` is Kamailio's.

    ``start()`` brings up a fresh cluster (new database, new Redis) in a directory of its own, so a restart
    after an overload starts clean; ``stop()`` stops every part.
    """

    def __init__(self, nodes: int, workdir: Path, binaries: Binaries) -> None:
        self.name = f"cluster-{nodes}"
        self.nodes = nodes
        self.root = workdir / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.binaries = binaries
        self.kamailio_config = bench_kamailio_config(self.root)
        self.port = 0
        self.cluster: LocalCluster | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        plan = make_plan(self.root / f"run-{self.starts}", self.nodes, free_port(), None, None, RTP_PORTS)
        cluster = LocalCluster(plan, NODE_CONFIG, self.binaries, kamailio_config=self.kamailio_config)
        self.cluster = cluster
        try:
            check_ports(plan)
            cluster.start(lambda _line: None)
        except LaunchError as exc:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {exc}") from None
        self.port = plan.sip_port

    def stop(self) -> None:
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.stop()

    def alive(self) -> bool:
        c = self.cluster
        if c is None or c.postgres is None or c.postgres.pid is None:
            return False
        return all(p.exited() is None for p in c.parts if p.proc is not None)

    def _pid(self, name: str) -> int | None:
        c = self.cluster
        return None if c is None else next((p.pid for p in c.parts if p.name == name), None)

    @property
    def pid(self) -> int | None:
        return self._pid("kamailio")

    def cpu_seconds(self) -> float | None:
        c = self.cluster
        if c is None:
            return None
        parts = [process_cpu_seconds(p.pid) for p in c.parts if p.name.startswith("node-") or p.name == "redis"]
        parts.append(process_cpu_seconds(self._pid("kamailio"), group=True))
        parts.append(tree_cpu_seconds(self._pid("postgresql")))
        return None if any(v is None for v in parts) else sum(v for v in parts if v is not None)

    def metrics_urls(self) -> list[str]:
        assert self.cluster is not None
        return [f"http://{HOST}:{n.http_port}/metrics" for n in self.cluster.plan.nodes]


# --------------------------------------------------------------------------- the decision latency


Buckets = dict[float, float]  # upper bound (seconds, inf for +Inf) -> cumulative count


def read_histogram(urls: Sequence[str], name: str = DECISION_METRIC) -> tuple[Buckets, float]:
    """The histogram ``name`` summed over the nodes' /metrics: cumulative bucket counts, and the sum."""
    buckets: Buckets = {}
    total = 0.0
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != name:
                continue
            for s in family.samples:
                if s.name == f"{name}_bucket":
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
                elif s.name == f"{name}_sum":
                    total += s.value
    return buckets, total


def bucket_quantile(q: float, buckets: Buckets) -> tuple[float | None, bool]:
    """The ``q`` quantile (0..1) from cumulative buckets, linear inside its bucket; (value, beyond the last bound)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None, False
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower, True
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0), False
        lower, below = bound, count
    return lower, True


@dataclass
class DecisionResult:
    name: str
    callers: int = 0  # asked for
    successful: int = 0
    failed: int = 0
    sipp_problems: list[str] = field(default_factory=list)
    count: int = 0  # events the nodes timed during the phase
    mean_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p99_beyond: bool = False  # p99 fell in the +Inf bucket: p99_ms is the highest bound
    buckets: dict[str, float] = field(default_factory=dict)  # le -> cumulative count during the phase


def decision_phase(opts: ClusterBenchOptions, target: ClusterTarget, workdir: Path) -> DecisionResult:
    """Queue callers through Kamailio for a while; the decision latency the nodes counted meanwhile."""
    res = DecisionResult(target.name)
    if not target.alive():
        target.stop()
        target.start()
    urls = target.metrics_urls()
    before, sum_before = read_histogram(urls)
    log(f"{target.name}: queue callers at {opts.decision_rate}/s for {opts.decision_seconds:g} s, "
        f"{opts.decision_hold} ms in line each")  # fmt: skip
    scenario = UacScenario(("-sf", str(QUEUE_CALLER), "-d", str(opts.decision_hold), "-mp", str(free_port())))
    run: Run = run_uac(
        opts.sip.sipp,
        target,
        opts.decision_rate,
        opts.decision_seconds,
        workdir,
        grace=KEY_1_AFTER + opts.decision_hold / 1000 + 10,
        scenario=scenario,
    )
    res.callers, res.successful, res.failed = run.calls, run.successful, run.failed
    res.sipp_problems = [p for p in run.problems if not p.startswith("offered only")]  # callers stay on: slower
    time.sleep(0.5)  # the last hang-ups' entries come back applied
    after, sum_after = read_histogram(urls)
    delta = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    res.buckets = {("+Inf" if math.isinf(b) else repr(b)): delta[b] for b in sorted(delta)}
    res.count = int(delta.get(math.inf, 0.0))
    if res.count:
        res.mean_ms = round(1000 * (sum_after - sum_before) / res.count, 3)
        p50, _ = bucket_quantile(0.5, delta)
        p99, res.p99_beyond = bucket_quantile(0.99, delta)
        res.p50_ms = None if p50 is None else round(1000 * p50, 3)
        res.p99_ms = None if p99 is None else round(1000 * p99, 3)
    p99_text = ("> " if res.p99_beyond else "") + shown(res.p99_ms, ".2f")
    log(f"  {target.name}: {res.successful}/{res.callers} callers, {res.count} events timed, "
        f"p50 {shown(res.p50_ms, '.2f')} ms, p99 {p99_text} ms")  # fmt: skip
    return res


# --------------------------------------------------------------------------- report


def render(
    results: Mapping[str, TargetResult], decisions: Mapping[str, DecisionResult], summary: dict[str, Any]
) -> str:
    out = results_table(results)
    for key, (ours, ref) in RATIOS.items():
        if key in summary["ratios"]:
            out.append(
                f"ratio {ours} / {ref} max clean rate: {shown(summary['ratios'][key], '.2f')}; "
                f"CPU per call ({ours} / {ref}): {shown(summary['cpu_ratios'][key], '.2f')}"
            )
    out.extend(result_notes(results))
    if decisions:
        out.append("")
        out.append("queue decision latency (submit on a node -> its replica applied it; a single node: 0)")
        head = ("target", "callers ok", "events", "mean ms", "p50 ms", "p99 ms")
        rows = [
            (
                d.name,
                f"{d.successful}/{d.callers}",
                str(d.count),
                shown(d.mean_ms, ".2f"),
                shown(d.p50_ms, ".2f"),
                ("> " if d.p99_beyond else "") + shown(d.p99_ms, ".2f"),
            )
            for d in decisions.values()
        ]
        out.extend(table(head, rows))
        out.extend(
            f"note: {d.name}: queue callers: {'; '.join(d.sipp_problems)}"
            for d in decisions.values()
            if d.sipp_problems
        )
    return "\n".join(out)


RATIOS = {"cluster-1/frontdesk": ("cluster-1", "frontdesk"), "cluster-2/cluster-1": ("cluster-2", "cluster-1")}


def summarize(results: Mapping[str, TargetResult], decisions: Mapping[str, DecisionResult]) -> dict[str, Any]:
    ratios: dict[str, float | None] = {}
    cpu_ratios: dict[str, float | None] = {}
    for key, (ours, ref) in RATIOS.items():
        if ours in results and ref in results:
            r = ratio(results[ours].max_clean_rate, results[ref].max_clean_rate)
            c = ratio(results[ours].cpu_ms_per_call, results[ref].cpu_ms_per_call)
            ratios[key] = None if r is None else round(r, 3)
            cpu_ratios[key] = None if c is None else round(c, 3)
    clusters = [n for n in results if n.startswith("cluster-")]
    answered = all(results[n].max_clean_rate > 0 for n in clusters)
    timed = all(decisions[n].count > 0 for n in clusters if n in decisions)
    return {
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "decision_p99_ms": {n: d.p99_ms for n, d in decisions.items()},
        "met": answered and timed,  # every cluster target answered calls through Kamailio and timed decisions
    }


# --------------------------------------------------------------------------- entry point


@dataclass
class ClusterBenchOptions:
    sip: SipBenchOptions
    decision_rate: int
    decision_seconds: float
    decision_hold: int  # ms a queue caller stays in line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-cluster",
        description="Highest clean call rate, INVITE->200 response times and CPU per call of one frontdesk node "
        "against one and two cluster nodes behind Kamailio, and the latency the cluster adds to a queue decision; "
        "on 127.0.0.1.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (< 90 s): tiny rates, 1 s runs")
    p.add_argument("--start-rate", type=int, help="first rung of the ladder, calls/s (default 100; quick 20)")
    p.add_argument("--max-rate", type=int, help="highest rate tried, calls/s (default 3200; quick 40)")
    p.add_argument("--factor", type=float, default=2.0, help="ladder growth factor (default 2)")
    p.add_argument("--precision", type=float, help="bisect until the gap is this share of the rate (default 0.1)")
    p.add_argument("--step-seconds", type=float, help="seconds of traffic per run (default 2; quick 1)")
    p.add_argument("--repeat", type=int, help="runs per step; the median run counts (default 1)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)} (default all)")
    p.add_argument("--decision-rate", type=int, help="queue callers per second in the decision phase (default 3)")
    p.add_argument("--decision-seconds", type=float, help="length of the decision phase, s (default 20; quick 4)")
    p.add_argument("--decision-hold", type=int, help="ms a queue caller waits in line (default 3000; quick 1000)")
    sipp_bench_options(p, check="exit 1 unless every cluster target answered calls and timed queue decisions")
    return p


def pick(given: T | None, default: T) -> T:
    """An option's value: as given (0 included, so that it is refused), else the default."""
    return default if given is None else given


def main(argv: list[str] | None = None) -> int:
    prog = "bench-cluster"
    args = build_parser().parse_args(cli_args(argv))
    quick = args.quick
    sip = SipBenchOptions(
        sipp=args.sipp,
        start_rate=pick(args.start_rate, 20 if quick else 100),
        max_rate=pick(args.max_rate, 40 if quick else 3200),
        factor=args.factor,
        precision=pick(args.precision, 0.5 if quick else 0.1),
        step_seconds=pick(args.step_seconds, 1.0 if quick else 2.0),
        repeat=pick(args.repeat, 1),
        grace=2.0 if quick else 3.0,
        settle=0.2 if quick else 0.5,
    )
    opts = ClusterBenchOptions(
        sip=sip,
        decision_rate=pick(args.decision_rate, 2 if quick else 3),
        decision_seconds=pick(args.decision_seconds, 4.0 if quick else 20.0),
        decision_hold=pick(args.decision_hold, 1000 if quick else 3000),
    )
    if sip.factor <= 1 or sip.start_rate < 1 or sip.max_rate < sip.start_rate or sip.repeat < 1:
        return refuse(prog, "need --factor > 1, 1 <= --start-rate <= --max-rate, --repeat >= 1")
    if not 0 < sip.precision < 1 or not 0.5 <= sip.step_seconds <= 60:
        return refuse(prog, "need 0 < --precision < 1 and 0.5 <= --step-seconds <= 60")
    if (
        not 1 <= opts.decision_rate <= 50
        or not 1 <= opts.decision_seconds <= 120
        or not 0 <= opts.decision_hold <= 60000
    ):
        return refuse(
            prog, "need 1 <= --decision-rate <= 50, 1 <= --decision-seconds <= 120, 0 <= --decision-hold <= 60000"
        )
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if not names or any(n not in TARGETS for n in names) or len(set(names)) != len(names):
        return refuse(prog, f"--targets takes a comma list of distinct names from {', '.join(TARGETS)}")
    if not executable(sip.sipp):
        return refuse(prog, f"SIPp not found at {sip.sipp} (Debian package sip-tester)")
    try:
        binaries = find_binaries()
    except LaunchError as exc:
        return refuse(prog, str(exc))

    run = BenchRun("frontdesk bench-cluster")
    decisions: dict[str, DecisionResult] = {}
    results: dict[str, TargetResult] = {}
    with work_directory("clusterbench-", args.keep) as workdir, sigterm_unwinds():
        targets: list[Target] = []
        try:
            for name in names:
                targets.append(
                    ClusterTarget(int(name[-1]), workdir, binaries) if name != "frontdesk" else Frontdesk(workdir)
                )
            caller = UacScenario(("-sf", str(CALLER), "-d", "0"), linger=CALLER_TIMEWAIT)
            uac = {t.name: caller for t in targets if isinstance(t, ClusterTarget)}
            results = measure(sip, targets, workdir, uac)
            for target in targets:
                if isinstance(target, ClusterTarget):
                    decisions[target.name] = decision_phase(opts, target, workdir)
        finally:
            for target in targets:
                target.stop()

    summary = summarize(results, decisions)
    print()
    print(render(results, decisions, summary))
    report = run.report(
        options=asdict(opts) | {"quick": quick, "latency_load": LATENCY_LOAD, "min_rate_share": MIN_RATE_SHARE},
        scenario={
            "frontdesk": f"sipp {' '.join(UAC_BUILTIN)} over UDP on 127.0.0.1",
            "cluster": "sipp -sf examples/cluster/caller.xml -d 0 through Kamailio (Record-Route followed)",
            "decision": "sipp -sf sim/scenarios/cluster_queue_caller.xml through Kamailio: key 1, wait, hang up",
            "rtd": "INVITE -> 200 OK, whole ms",
        },
        machine=run.machine(frontdesk_event_loop=event_loop_name(), sipp=sipp_version(sip.sipp)),
        targets={name: asdict(r) for name, r in results.items()},
        decision={name: asdict(d) for name, d in decisions.items()},
        **summary,
    )
    return run.finish(report, json_path=args.json, check=args.check, met=summary["met"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

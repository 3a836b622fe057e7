"""Prometheus export in cluster mode: the node's share of the log, a node label, queue families exported once.

Every node holds the same replica of the queue engine (docs/cluster.md), so
the queue-wide families (``QueueCollector``) are exported by the timekeeper
only and carry no node label: summed over nodes they stay right, and since
the replicas are equal they run on without a jump when the lease changes
hands. Everything else is this node's own and gets ``node_id="<node>"``
(``node`` is taken: it names IVR flow nodes). ``ClusterCollector`` shows the
log working: entries appended and applied, the apply lag, the lease, timers
and lost nodes appended, checkpoints (and those refused), Redis outages,
degraded periods, rejoins and the generation, and the decision
latency (``frontdesk_cluster_decision_seconds``: an event submitted here
until this node's replica applied it, what a queue decision pays over a
single node).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ivr.web.metrics import AgentCallCounts, agent_call_families

if TYPE_CHECKING:
    from ivr.cluster.log import ClusterLog

NODE_LABEL = "node_id"


class NodeRegistry(CollectorRegistry):
    """A registry whose samples get this node's label, but for the families of the shared collectors."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self._shared: list[Collector] = []

    def register_shared(self, collector: Collector) -> None:
        """Families the same on every node, exported by one of them (no node label)."""
        self._shared.append(collector)

    def collect(self) -> Iterable[Metric]:
        for metric in super().collect():
            metric.samples = [s._replace(labels={**s.labels, NODE_LABEL: self.node}) for s in metric.samples]
            yield metric
        for collector in self._shared:
            yield from collector.collect()


class AgentCallCollector(Collector):
    """This node's calls to agents' phones (in cluster mode beside the timekeeper's queue families)."""

    def __init__(self, counts: AgentCallCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        yield from agent_call_families(self.counts)


_COUNTERS = (
    ("frontdesk_cluster_log_appends", "Entries this node appended to the cluster's log", "appends"),
    ("frontdesk_cluster_log_append_errors", "Failed attempts to append (retried unless refused)", "append_errors"),
    ("frontdesk_cluster_log_dropped", "Events dropped because too many were waiting to be appended", "dropped"),
    ("frontdesk_cluster_log_applied", "Entries of the log applied to this node's replica as they came", "applied"),
    ("frontdesk_cluster_log_replayed", "Entries applied at start-up or after loading a checkpoint", "replayed"),
    ("frontdesk_cluster_log_malformed", "Entries skipped as malformed (the same on every node)", "malformed"),
    ("frontdesk_cluster_log_apply_errors", "Entries whose application failed here (logged)", "apply_errors"),
    ("frontdesk_cluster_lease_acquired", "Times this node took the timekeeper's lease", "lease_acquired"),
    ("frontdesk_cluster_lease_lost", "Times this node lost the timekeeper's lease", "lease_lost"),
    ("frontdesk_cluster_timers_appended", "Engine timers this node appended as the timekeeper", "timers"),
    ("frontdesk_cluster_nodes_lost_appended", "Lost nodes this node announced as the timekeeper", "nodes_lost"),
    ("frontdesk_cluster_checkpoints_written", "Checkpoints of the replica this node wrote", "checkpoints_written"),
    ("frontdesk_cluster_checkpoints_loaded", "Checkpoints this node loaded", "checkpoints_loaded"),
    (
        "frontdesk_cluster_checkpoints_refused",
        "Checkpoints this node refused, unsigned or signed with another cluster.secret (never unpickled)",
        "checkpoints_refused",
    ),
    ("frontdesk_cluster_redis_outages", "Times Redis became unreachable from this node", "outages"),
    (
        "frontdesk_cluster_degraded_periods",
        "Times this node went degraded (Redis failed for node_timeout: it decided alone)",
        "degraded_periods",
    ),
    ("frontdesk_cluster_rejoins", "Times this node joined up again in a new generation", "rejoins"),
    ("frontdesk_cluster_generations_started", "New generations this node opened", "generations_started"),
)


class ClusterCollector(Collector):
    """This node's end of the shared log (ivr/cluster/log.py)."""

    def __init__(self, log: ClusterLog) -> None:
        self.log = log

    def collect(self) -> Iterator[Metric]:
        st = self.log.stats
        for name, doc, attr in _COUNTERS:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], getattr(st, attr))
            yield c
        g = GaugeMetricFamily("frontdesk_cluster_log_queued", "Events waiting to be appended to the log")
        g.add_metric([], st.queued)
        yield g
        lag = SummaryMetricFamily(
            "frontdesk_cluster_apply_lag_seconds", "From an entry's own time (its node's clock) to its apply here"
        )
        lag.add_metric([], st.applied, st.lag_sum)
        yield lag
        yield decision_family(st.decision_buckets, st.decision_counts, st.decision_sum)
        g = GaugeMetricFamily("frontdesk_cluster_apply_lag_max_seconds", "Longest apply lag since start")
        g.add_metric([], st.lag_max)
        yield g
        g = GaugeMetricFamily("frontdesk_cluster_timekeeper", "1 while this node holds the timekeeper's lease")
        g.add_metric([], 1 if self.log.is_timekeeper else 0)
        yield g
        g = GaugeMetricFamily(
            "frontdesk_cluster_degraded", "1 while this node decides alone for its own callers (Redis failed)"
        )
        g.add_metric([], 1 if self.log.degraded else 0)
        yield g
        g = GaugeMetricFamily("frontdesk_cluster_generation", "The generation of the line this node's replica holds")
        g.add_metric([], self.log.coordinator.generation)
        yield g


def decision_family(bounds: Sequence[float], counts: Sequence[int], total: float) -> HistogramMetricFamily:
    """The decision-latency histogram from per-bucket counts (one more count than bounds: above every bound)."""
    cumulative, buckets = 0, []
    for bound, n in zip((*map(repr, bounds), "+Inf"), counts, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    h = HistogramMetricFamily(
        "frontdesk_cluster_decision_seconds",
        "From an event submitted on this node to this node's replica applying it (its round trip through Redis)",
    )
    h.add_metric([], buckets, total)
    return h


class LostCallersCollector(Collector):
    """Callers who left the line with their node (replicated: exported by the timekeeper only, unlabelled)."""

    def __init__(self, log: ClusterLog) -> None:
        self.log = log

    def collect(self) -> Iterator[Metric]:
        if not self.log.is_timekeeper:
            return
        c = CounterMetricFamily(
            "frontdesk_cluster_callers_lost",
            "Callers waiting or ringing who left the line because their node was lost",
            labels=["lost_node", "queue"],
        )
        for (node, queue), n in sorted(self.log.coordinator.lost.items()):
            c.add_metric([node, queue], n)
        yield c

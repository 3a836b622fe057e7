"""Prometheus export of the SIP core's, the IVR's and the queues' counters.

The core counts into plain integers (:class:`ivr.sip.ua.SipStats`) so the
per-message path pays for a dict update, not for a metrics library; this
collector turns them into metric families when Prometheus scrapes. The queue
engine keeps its own counters (``queueing.stats.QueueStats``), read the
same way by :class:`QueueCollector`.
All names share the ``frontdesk_`` prefix and use base units. The module is
long because it holds one collector per part of the server, each a list of
families that the README's metrics table documents one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from ivr.calls.ivrcall import IvrMetrics
from ivr.sip.registrar import RESULTS
from ivr.sip.throttle import DOORS, AuthThrottle
from ivr.sip.ua import Outcome, UserAgent
from ivr.transport.rtp import LATENESS_BUCKETS, MediaShell
from queueing.agents import AgentState
from queueing.engine import Engine
from queueing.events import SurgeCause
from queueing.model import OverflowTarget
from queueing.stats import QueueStats, Snapshot


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` label, cumulative count) from per-bucket counts; the last count is above them all."""
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip([*bounds, float("inf")], counts, strict=False):
        acc += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), acc))
    return out


class SipCollector(Collector):
    def __init__(
        self,
        ua: UserAgent,
        record_backlog: Callable[[], int] | None = None,
        record_errors: Callable[[], int] | None = None,
    ) -> None:
        self.ua = ua
        self.record_backlog = record_backlog
        self.record_errors = record_errors

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        st = self.ua.stats
        c = CounterMetricFamily(
            "frontdesk_sip_requests_received", "SIP requests received, by method", labels=["method"]
        )
        for method, n in sorted(st.requests_received.items()):
            c.add_metric([method], n)
        yield c
        c = CounterMetricFamily(
            "frontdesk_sip_responses_sent",
            "SIP responses sent, by request method and status",
            labels=["method", "status"],
        )
        for (method, status), n in sorted(st.responses_sent.items()):
            c.add_metric([method, str(status)], n)
        yield c
        c = CounterMetricFamily("frontdesk_sip_requests_sent", "SIP requests sent, by method", labels=["method"])
        for method, n in sorted(st.requests_sent.items()):
            c.add_metric([method], n)
        yield c
        c = CounterMetricFamily(
            "frontdesk_sip_responses_received",
            "SIP responses received, by request method and status",
            labels=["method", "status"],
        )
        for (method, status), n in sorted(st.responses_received.items()):
            c.add_metric([method, str(status)], n)
        yield c
        c = CounterMetricFamily(
            "frontdesk_sip_retransmissions",
            "SIP retransmissions: 'sent' are our resends (timers, answers to copies), 'received' are copies absorbed",
            labels=["direction"],
        )
        c.add_metric(["sent"], st.retransmissions_sent)
        c.add_metric(["received"], st.retransmissions_received)
        yield c
        c = CounterMetricFamily(
            "frontdesk_sip_malformed_messages",
            "Malformed SIP messages: 'answered' got a 400/505, 'dropped' could not be answered",
            labels=["action"],
        )
        for action in ("answered", "dropped"):
            c.add_metric([action], st.malformed[action])
        yield c
        c = CounterMetricFamily("frontdesk_sip_stray_responses", "Responses matching no transaction of ours")
        c.add_metric([], st.stray_responses)
        yield c
        h = st.answer_latency
        hf = HistogramMetricFamily("frontdesk_sip_answer_latency_seconds", "INVITE received to 200 OK sent", unit="")
        hf.add_metric([], cumulative_buckets(h.buckets, h.counts), h.total)
        yield hf
        g = GaugeMetricFamily("frontdesk_calls_active", "Calls in progress (ringing, answered or talking)")
        g.add_metric([], len(self.ua.calls))
        yield g
        g = GaugeMetricFamily(
            "frontdesk_sip_transactions_active", "SIP transactions alive (incl. those waiting out their timers)"
        )
        g.add_metric([], self.ua.transactions_active)
        yield g
        g = GaugeMetricFamily(
            "frontdesk_sip_timer_entries",
            "SIP timers held: on the heap (re-armed ones included) and the calls' far ones (hold) off it",
        )
        g.add_metric([], self.ua.timer_entries)
        yield g
        c = CounterMetricFamily("frontdesk_calls_ended", "Calls ended, by outcome", labels=["outcome"])
        for outcome in (o.value for o in Outcome):
            c.add_metric([outcome], st.calls_ended.get(outcome, 0))
        yield c
        c = CounterMetricFamily(
            "frontdesk_calls_rejected_overload", "INVITEs refused with 503 because max_calls was reached"
        )
        c.add_metric([], st.calls_rejected_overload)
        yield c
        reg = self.ua.registrar
        g = GaugeMetricFamily("frontdesk_registrations_active", "Agents' phone contacts registered now (bindings)")
        g.add_metric([], reg.active)
        yield g
        c = CounterMetricFamily(
            "frontdesk_register_requests",
            "REGISTER requests by result: ok (200), challenged (401), rejected (400/403/423/...)",
            labels=["result"],
        )
        for result in RESULTS:
            c.add_metric([result], reg.requests.get(result, 0))
        yield c
        yield from auth_families(reg.throttle)
        if self.record_backlog is not None:
            g = GaugeMetricFamily("frontdesk_call_records_pending", "Call records waiting to be written")
            g.add_metric([], self.record_backlog())
            yield g
        if self.record_errors is not None:
            c = CounterMetricFamily("frontdesk_call_record_write_errors", "Failed call-record batch writes (retried)")
            c.add_metric([], self.record_errors())
            yield c


def auth_families(throttle: AuthThrottle) -> Iterator[object]:
    """Wrong passwords and refused tries by door (register, basic, login); the table is ivr/web/mapmetrics.py's."""
    for name, doc, counts in (
        ("frontdesk_auth_failures", "Wrong passwords or unknown names, by door", throttle.failures),
        ("frontdesk_auth_throttled", "Login attempts refused unchecked while blocked", throttle.throttled),
    ):
        c = CounterMetricFamily(name, doc, labels=["door"])
        for door in DOORS:
            c.add_metric([door], counts.get(door, 0))
        yield c


class IvrCollector(Collector):
    """IVR and media counters (plain counts kept by ivr.calls.ivrcall and the RTP engine)."""

    def __init__(self, ivr: IvrMetrics, media: MediaShell) -> None:
        self.ivr = ivr
        self.media = media

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        m, st = self.ivr, self.media.stats
        c = CounterMetricFamily("frontdesk_ivr_node_visits", "IVR flow nodes entered", labels=["flow", "node"])
        for (flow, node), n in sorted(m.node_visits.items()):
            c.add_metric([flow, node], n)
        yield c
        c = CounterMetricFamily(
            "frontdesk_ivr_notices_played", "Targeted notices played (R6), by prompt", labels=["notice"]
        )
        for notice, n in sorted(m.notices_played.items()):
            c.add_metric([notice], n)
        yield c
        for name, doc, value in (
            ("frontdesk_ivr_hotkey_uses", "Hot-topic key answers played (R7)", m.hotkey_uses),
            ("frontdesk_ivr_self_service", "Callers sent to self-service (R9)", m.self_service),
            ("frontdesk_ivr_screened", "Callers screened out (R5)", m.screened),
            ("frontdesk_ivr_messages_recorded", "Caller messages recorded (R14)", m.messages_recorded),
            ("frontdesk_ivr_transfers", "Transfers requested with REFER", m.transfers),
            ("frontdesk_media_timeouts", "Calls hung up because the caller's RTP stopped", st.media_timeouts),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        c = CounterMetricFamily(
            "frontdesk_dtmf_received", "Keys received, by source (rtp = RFC 4733, info = SIP INFO)", labels=["source"]
        )
        for source in ("rtp", "info"):
            c.add_metric([source], m.dtmf_received.get(source, 0))
        yield c
        pin, pout = self.media.totals()
        c = CounterMetricFamily("frontdesk_rtp_packets", "RTP packets, by direction", labels=["direction"])
        c.add_metric(["in"], pin)
        c.add_metric(["out"], pout)
        yield c
        c = CounterMetricFamily(
            "frontdesk_media_stream_failures",
            "RTP streams ended by an exception in them (the call ended, the others' media went on), by stage",
            labels=["stage"],
        )
        for stage, n in st.stream_failures.items():
            c.add_metric([stage], n)
        yield c
        c = CounterMetricFamily(
            "frontdesk_rtp_packets_dropped",
            "RTP packets not from a stream's latched source (learning: not the signalling or SDP host), by reason",
            labels=["reason"],
        )
        for reason, n in sorted(self.media.dropped().items()):
            c.add_metric([reason], n)
        yield c
        g = GaugeMetricFamily("frontdesk_media_streams_active", "Calls with an open RTP stream")
        g.add_metric([], self.media.active)
        yield g
        h = HistogramMetricFamily("frontdesk_rtp_pacing_lateness_seconds", "How late each shared 20 ms media tick ran")
        h.add_metric([], cumulative_buckets(LATENESS_BUCKETS, st.lateness_counts), st.lateness_sum)
        yield h
        sender = self.media.batch_sender
        g = GaugeMetricFamily(
            "frontdesk_rtp_send_batched", "1 while the tick's packets go out through the C batch sender"
        )
        g.add_metric([], 0 if sender is None else 1)
        yield g
        if sender is not None:
            _sent, failed, waits, _errno = sender.counts()
            c = CounterMetricFamily(
                "frontdesk_rtp_batch_send_failures", "Packets the batch sender's thread could not send (lost frames)"
            )
            c.add_metric([], failed)
            yield c
            c = CounterMetricFamily(
                "frontdesk_rtp_batch_waits",
                "Flushes of the tick that waited for the batch sender's threads (65,536 packets behind)",
            )
            c.add_metric([], waits)
            yield c
            g = GaugeMetricFamily("frontdesk_rtp_send_threads", "Threads the batch sender sends from")
            g.add_metric([], sender.threads)
            yield g


class AgentCallCounts(Protocol):
    """What the live server counts about the calls it places to agents' phones (the engine does not see SIP)."""

    @property
    def agent_calls(self) -> Mapping[str, int]: ...  # INVITEs to agents by result

    @property
    def unreachable(self) -> int: ...  # rings to agents with no registered phone


@dataclass(frozen=True)
class _Scrape:
    """One scrape's view of the engine: every queue family reads the same snapshot."""

    engine: Engine
    snap: Snapshot
    names: list[str]  # the queues, sorted

    @property
    def stats(self) -> Mapping[str, QueueStats]:
        return self.engine.stats


# (name, help, QueueStats attribute) of the per-queue counters
_QUEUE_COUNTERS = (
    ("frontdesk_queue_calls_offered", "Callers who joined the queue", "offered"),
    ("frontdesk_queue_calls_answered", "Callers answered by an agent", "answered"),
    ("frontdesk_queue_calls_abandoned", "Callers who hung up while waiting or ringing", "abandoned"),
    ("frontdesk_queue_ring_no_answer", "Agent rings that went unanswered (ring timeout or refused)", "ring_no_answer"),
    (
        "frontdesk_queue_answered_within_threshold",
        "Callers answered within the service-level threshold",
        "answered_within_t",
    ),
    (
        "frontdesk_queue_abandoned_short",
        "Abandons within the grace period (left out of the service level)",
        "abandoned_short",
    ),
)

# (name, help, value of one queue) of the per-queue gauges
_QUEUE_GAUGES: tuple[tuple[str, str, Callable[[_Scrape, str], float]], ...] = (
    (
        "frontdesk_queue_waiting_calls",
        "Callers waiting in line now (not ringing)",
        lambda s, q: s.snap.queues[q].waiting,
    ),
    (
        "frontdesk_queue_ringing_calls",
        "Callers whose agent phone is ringing now",
        lambda s, q: s.snap.queues[q].ringing,
    ),
    (
        "frontdesk_queue_longest_wait_seconds",
        "Longest wait of the callers in line now",
        lambda s, q: s.snap.queues[q].longest_waiting,
    ),
    (
        "frontdesk_queue_ewt_seconds",
        "Estimated wait for a caller joining now (+Inf when no agent serves the queue)",
        lambda s, q: s.snap.queues[q].ewt,
    ),
    (
        "frontdesk_queue_aht_seconds",
        "Average handle time (talk + wrap-up), moving average",
        lambda s, q: s.snap.queues[q].aht,
    ),
    (
        "frontdesk_queue_service_level_ratio",
        "Answered within the threshold / (answered + abandoned + overflowed - short abandons), since start",
        lambda s, q: s.stats[q].service_level,
    ),
    (
        "frontdesk_queue_service_level_threshold_seconds",
        "T of the service level: answers within this count",
        lambda s, q: s.engine.queues[q].service_level_t,
    ),
    (
        "frontdesk_queue_service_level_target_ratio",
        "The service level aimed at",
        lambda s, q: s.engine.queues[q].service_level_target,
    ),
    ("frontdesk_queue_asa_seconds", "Average speed of answer since start", lambda s, q: s.stats[q].asa),
    (
        "frontdesk_queue_agents_serving",
        "Agents logged in, not 'not ready', with the queue's skills",
        lambda s, q: s.snap.queues[q].serving,
    ),
)

# (name, help, QueueStats attributes of count and sum) of the per-queue summaries
_QUEUE_SUMMARIES = (
    (
        "frontdesk_queue_answer_wait_seconds",
        "Waits of answered callers, joining to answer",
        "answered",
        "answer_wait_total",
    ),
    (
        "frontdesk_queue_ewt_error_seconds",
        "Actual minus predicted wait of answered callers (positive: they waited longer than estimated)",
        "ewt_samples",
        "ewt_error_total",
    ),
    (
        "frontdesk_queue_ewt_abs_error_seconds",
        "Absolute error of the wait predicted on joining",
        "ewt_samples",
        "ewt_abs_error_total",
    ),
)


class QueueCollector(Collector):
    """Queues, agents and the surge switch, read from the queueing engine at scrape time (docs/queueing.md).

    ``engine_getter`` is called on every scrape, so the router may swap engines
    (a reload) without re-registering. Counters run from the engine's start.
    ``router_counts``, when given, adds the live server's counts of calls to agents.
    """

    def __init__(
        self,
        engine_getter: Callable[[], Engine],
        outbound_paused: Callable[[], bool],
        router_counts: AgentCallCounts | None = None,
        exporting: Callable[[], bool] | None = None,
    ) -> None:
        self.engine_getter = engine_getter
        self.outbound_paused = outbound_paused
        self.router_counts = router_counts
        # cluster mode: every node holds the same replica, so only one (the timekeeper) exports these
        # families and sums over nodes stay right (the node's own AgentCallCollector is always exported)
        self.exporting = exporting

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        if self.exporting is not None and not self.exporting():
            return
        engine = self.engine_getter()
        scrape = _Scrape(engine, engine.snapshot(), sorted(engine.queues))
        yield from self._queue_counters(scrape)
        yield self._overflowed(scrape)
        yield from self._queue_gauges(scrape)
        yield from self._queue_summaries(scrape)
        yield self._agents(scrape)
        yield from self._surge(scrape)
        yield self._outbound_paused()
        if self.router_counts is not None:
            yield from agent_call_families(self.router_counts)

    @staticmethod
    def _queue_counters(s: _Scrape) -> Iterator[CounterMetricFamily]:
        for name, doc, attr in _QUEUE_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=["queue"])
            for q in s.names:
                c.add_metric([q], getattr(s.stats[q], attr))
            yield c

    @staticmethod
    def _overflowed(s: _Scrape) -> CounterMetricFamily:
        c = CounterMetricFamily(
            "frontdesk_queue_calls_overflowed",
            "Callers taken out of the queue, by where they went",
            labels=["queue", "target"],
        )
        for q in s.names:
            for target in get_args(OverflowTarget):
                c.add_metric([q, target], s.stats[q].overflowed.get(target, 0))
        return c

    @staticmethod
    def _queue_gauges(s: _Scrape) -> Iterator[GaugeMetricFamily]:
        for name, doc, value in _QUEUE_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=["queue"])
            for q in s.names:
                g.add_metric([q], value(s, q))
            yield g

    @staticmethod
    def _queue_summaries(s: _Scrape) -> Iterator[SummaryMetricFamily]:
        for name, doc, count, total in _QUEUE_SUMMARIES:
            m = SummaryMetricFamily(name, doc, labels=["queue"])
            for q in s.names:
                stats = s.stats[q]
                m.add_metric([q], count_value=getattr(stats, count), sum_value=getattr(stats, total))
            yield m

    @staticmethod
    def _agents(s: _Scrape) -> GaugeMetricFamily:
        g = GaugeMetricFamily("frontdesk_agents", "Agents by state", labels=["state"])
        for state in AgentState:
            g.add_metric([state.value], s.snap.agents_by_state.get(state.value, 0))
        return g

    @staticmethod
    def _surge(s: _Scrape) -> Iterator[object]:
        g = GaugeMetricFamily("frontdesk_surge_active", "1 while surge mode is on")
        g.add_metric([], 1 if s.engine.surge else 0)
        yield g
        c = CounterMetricFamily(
            "frontdesk_surge_changes", "Surge switch changes, by what decided them", labels=["cause"]
        )
        for cause in get_args(SurgeCause):
            c.add_metric([cause], s.engine.surge_changes.get(cause, 0))
        yield c

    def _outbound_paused(self) -> GaugeMetricFamily:
        g = GaugeMetricFamily("frontdesk_outbound_paused", "1 while outbound calls are paused (R15)")
        g.add_metric([], 1 if self.outbound_paused() else 0)
        return g


def agent_call_families(counts: AgentCallCounts) -> Iterator[CounterMetricFamily]:
    """Calls placed to agents' phones by result, and rings for agents with no phone registered."""
    c = CounterMetricFamily(
        "frontdesk_queue_agent_calls", "Calls placed to agents' phones, by result", labels=["result"]
    )
    for result, n in sorted(counts.agent_calls.items()):
        c.add_metric([result], n)
    yield c
    c = CounterMetricFamily(
        "frontdesk_queue_agent_unreachable", "Rings asked for an agent whose phone is not registered"
    )
    c.add_metric([], counts.unreachable)
    yield c


class CallbackCollector(Collector):
    """The callback list (R2, R10, R15): by state, oldest waiting, promises, dispatch, bookings, dials.

    The list's numbers are those of the dispatcher's last pass (every
    ``callbacks.dispatch_interval`` seconds); counters run from start-up.
    """

    def __init__(self, counters: Any, dispatching: Callable[[], bool] | None = None) -> None:
        self.c = counters  # ivr.calls.dialer.DeskCounters
        # cluster mode: the list's gauges come from the dispatcher's passes, which run on the timekeeper only;
        # another node would export the last values it saw as the timekeeper
        self.dispatching = dispatching

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        c = self.c
        if self.dispatching is None or self.dispatching():
            yield from self._list(c)
        yield CounterMetricFamily(
            "frontdesk_callback_promises_missed", "Callbacks whose promised time passed before they started",
            value=c.promises_missed,
        )  # fmt: skip
        yield CounterMetricFamily(
            "frontdesk_callback_promise_warnings", "Texts sent to callers whose promise was at risk",
            value=c.promises_warned,
        )  # fmt: skip
        yield from self._own(c)

    @staticmethod
    def _list(c: Any) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("frontdesk_callbacks", "Callbacks in the list, by state", labels=["state"])
        for state, n in c.by_state.items():
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily(
            "frontdesk_callback_oldest_waiting_seconds",
            "Age of the oldest callback still booked or due",
            value=c.oldest_waiting,
        )
        yield GaugeMetricFamily(
            "frontdesk_callback_promises_at_risk",
            "Open callbacks the forecast says will start after the time promised to the caller",
            value=c.at_risk,
        )
        yield GaugeMetricFamily(
            "frontdesk_callback_dispatch_paused", "1 while outbound callbacks are paused (surge, R15)",
            value=1 if c.dispatch_paused else 0,
        )  # fmt: skip

    @staticmethod
    def _own(c: Any) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("frontdesk_callback_bookings", "Callbacks booked (committed)", value=c.bookings)
        yield CounterMetricFamily(
            "frontdesk_callback_booking_errors", "Bookings that failed (the caller was told)", value=c.booking_errors
        )
        yield CounterMetricFamily(
            "frontdesk_callback_closed_reached_agent",
            "Callbacks closed because the caller reached an agent first (R10)",
            value=c.closed_reached_agent,
        )
        yield CounterMetricFamily("frontdesk_callback_expired", "Callbacks expired unserved", value=c.expired)
        d = CounterMetricFamily("frontdesk_callback_dials", "Callback dialling attempts, by result", labels=["result"])
        for result in ("connected", "agent_no_answer", "customer_no_answer", "customer_failed", "no_port"):
            d.add_metric([result], c.dials.get(result, 0))
        yield d

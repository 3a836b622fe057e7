"""Prometheus export of the SIP core's counters.

The core counts into plain integers (:class:`ivr.sip.ua.SipStats`) so the
per-message path pays for a dict update, not for a metrics library; this
collector turns them into metric families when Prometheus scrapes.
All names share the ``frontdesk_`` prefix and use base units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .sip.ua import UserAgent


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
        buckets = []
        acc = 0
        for bound, n in zip([*list(h.buckets), float("inf")], h.counts, strict=False):
            acc += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        hf = HistogramMetricFamily("frontdesk_sip_answer_latency_seconds", "INVITE received to 200 OK sent", unit="")
        hf.add_metric([], buckets, h.total)
        yield hf
        g = GaugeMetricFamily("frontdesk_calls_active", "Calls in progress (ringing, answered or talking)")
        g.add_metric([], len(self.ua.calls))
        yield g
        g = GaugeMetricFamily(
            "frontdesk_sip_transactions_active", "SIP transactions alive (incl. those waiting out their timers)"
        )
        g.add_metric([], self.ua.transactions_active)
        yield g
        c = CounterMetricFamily("frontdesk_calls_ended", "Calls ended, by outcome", labels=["outcome"])
        for outcome in ("completed", "cancelled", "rejected", "no_ack", "failed"):
            c.add_metric([outcome], st.calls_ended.get(outcome, 0))
        yield c
        c = CounterMetricFamily(
            "frontdesk_calls_rejected_overload", "INVITEs refused with 503 because max_calls was reached"
        )
        c.add_metric([], st.calls_rejected_overload)
        yield c
        if self.record_backlog is not None:
            g = GaugeMetricFamily("frontdesk_call_records_pending", "Call records waiting to be written")
            g.add_metric([], self.record_backlog())
            yield g
        if self.record_errors is not None:
            c = CounterMetricFamily("frontdesk_call_record_write_errors", "Failed call-record batch writes (retried)")
            c.add_metric([], self.record_errors())
            yield c

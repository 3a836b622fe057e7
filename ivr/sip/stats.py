"""The SIP core's counters: plain integers and bucket counts, exported by ivr/web/metrics.py at scrape time.

Counting into plain values keeps the sans-IO core free of prometheus_client
and costs one dict update per message.
"""

from __future__ import annotations

from bisect import bisect_left

ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "NOTIFY", "REGISTER")
# Methods we know of but do not serve: answered 405 with Allow. Anything
# else is answered 501 (RFC 3261 8.2.1).
KNOWN_NOT_ALLOWED = frozenset({"SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER", "UPDATE", "PRACK"})
# methods counted under their own name; the rest as "other", so a peer cannot grow the label set
METRIC_METHODS = frozenset(ALLOWED_METHODS) | KNOWN_NOT_ALLOWED

# Answer latency buckets: SIP answers run to milliseconds, the ring limit to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def metric_method(method: str) -> str:
    return method if method in METRIC_METHODS else "other"


class LatencyHistogram:
    """Cumulative-ready bucket counts, read by the metrics collector."""

    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class SipStats:
    """Plain counters kept by the core; exported by ivr.web.metrics at scrape time."""

    def __init__(self) -> None:
        self.requests_received: dict[str, int] = {}
        self.responses_sent: dict[tuple[str, int], int] = {}
        self.requests_sent: dict[str, int] = {}
        self.responses_received: dict[tuple[str, int], int] = {}
        self.retransmissions_sent = 0
        self.retransmissions_received = 0
        self.malformed: dict[str, int] = {"dropped": 0, "answered": 0}
        self.stray_responses = 0
        self.calls_ended: dict[str, int] = {}
        self.answer_latency = LatencyHistogram()
        self.calls_rejected_overload = 0
        self.transactions_refused = 0  # new requests dropped: the server transaction table was full
        # calls we placed, by result: answered, busy, cancelled, timeout, rejected, failed
        self.out_calls: dict[str, int] = {}

    def count_request(self, method: str) -> None:
        m = metric_method(method)
        self.requests_received[m] = self.requests_received.get(m, 0) + 1

    def count_response(self, method: str, status: int) -> None:
        key = (metric_method(method), status)
        self.responses_sent[key] = self.responses_sent.get(key, 0) + 1

    def count_response_received(self, method: str, status: int) -> None:
        key = (metric_method(method), status)
        self.responses_received[key] = self.responses_received.get(key, 0) + 1

    def count_sent(self, method: str) -> None:
        self.requests_sent[method] = self.requests_sent.get(method, 0) + 1

    def count_out_call(self, result: str) -> None:
        self.out_calls[result] = self.out_calls.get(result, 0) + 1

    def count_ended(self, outcome: str) -> None:
        self.calls_ended[outcome] = self.calls_ended.get(outcome, 0) + 1

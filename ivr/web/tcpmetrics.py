"""Prometheus export of SIP over TCP's limits (ivr/transport/tcp.py): what is open, what was refused or closed.

Kept beside ivr/web/metrics.py, the same way: the guard counts into plain
integers and this collector turns them into metric families at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ivr.transport.tcp import CLOSURES, REFUSALS, TcpGuard


class TcpCollector(Collector):
    """SIP over TCP within security.tcp's limits (ivr/transport/tcp.py): what is open, what was refused or closed."""

    def __init__(self, tcp: TcpGuard) -> None:
        self.tcp = tcp

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        tcp = self.tcp
        for name, doc, value in (
            ("frontdesk_sip_tcp_connections", "SIP-over-TCP connections open", tcp.open),
            (
                "frontdesk_sip_tcp_sources",
                "Distinct peer addresses with an open SIP-over-TCP connection",
                len(tcp.per_source),
            ),
            ("frontdesk_sip_tcp_buffered_bytes", "Bytes of unfinished SIP-over-TCP input held", tcp.buffered),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        c = CounterMetricFamily(
            "frontdesk_sip_tcp_connections_refused",
            "New SIP-over-TCP connections closed at once: over the total or the per-source cap",
            labels=["reason"],
        )
        for reason in REFUSALS:
            c.add_metric([reason], tcp.refused[reason])
        yield c
        c = CounterMetricFamily(
            "frontdesk_sip_tcp_connections_closed",
            "SIP-over-TCP connections the server closed, by reason (evicted: room for a new one at the total cap)",
            labels=["reason"],
        )
        for reason in CLOSURES:
            c.add_metric([reason], tcp.closed[reason])
        yield c
        c = CounterMetricFamily(
            "frontdesk_sip_tcp_read_pauses",
            "Times a connection was no longer read from: its peer did not read our output",
        )
        c.add_metric([], tcp.read_pauses)
        yield c

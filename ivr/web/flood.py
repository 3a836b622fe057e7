"""SIP flood control from ``security.flood``: building the admission the UDP shell asks, and its metrics.

:class:`ivr.sip.admission.Admission` keeps plain counters; this collector
turns them into metric families when Prometheus scrapes, like the SIP core's
own (ivr/web/metrics.py). Reasons are a fixed set; no source address is a
label.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ivr.settings.security import SecuritySettings
from ivr.sip.admission import Admission, AdmissionLimits


def admission_for(security: SecuritySettings) -> Admission | None:
    """The admission for ``security.flood``, or None when it is turned off."""
    flood = security.flood
    if not flood.enabled:
        return None
    limits = AdmissionLimits(**flood.model_dump(exclude={"enabled"}))
    return Admission(limits, security.trusts, tag=secrets.token_hex(8))


class FloodCollector(Collector):
    """``frontdesk_sip_flood_*``: datagrams turned away by reason and action, blocks, sources held."""

    def __init__(self, admission: Admission, clock: Callable[[], float]) -> None:
        self.admission = admission
        self.clock = clock

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        adm = self.admission
        adm.expire(self.clock())
        c = CounterMetricFamily(
            "frontdesk_sip_flood_rejected",
            "SIP datagrams turned away before parsing, by reason (blocked, rate, new_calls, network, overload) "
            "and action (drop, reply: a 503)",
            labels=["reason", "action"],
        )
        for (reason, action), n in adm.rejected.items():
            c.add_metric([reason, action], n)
        yield c
        yield CounterMetricFamily(
            "frontdesk_sip_flood_blocks", "Sources blocked for going over the request rate", value=adm.blocks
        )
        yield GaugeMetricFamily(
            "frontdesk_sip_flood_blocked_sources", "Sources whose datagrams are dropped unread now",
            value=adm.blocked_sources,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "frontdesk_sip_flood_sources", "Sources counted in the current one-second window",
            value=adm.tracked_sources,
        )  # fmt: skip

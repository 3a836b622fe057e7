"""Prometheus export of the capped tables keyed by remote input, and of caller-ID trust and the text cap.

Kept beside ivr/web/metrics.py, the same way: each table is read at scrape
time as (name, entries, cap, refused at the cap); the caps are
``security.limits`` (ivr/settings/limits.py). The caller-ID counters are
``ivr/calls/trust.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ivr.calls.trust import TEXT_REFUSALS, UNTRUSTED_ACTIONS, TextGate
from ivr.sip.registrar import REPLAY_RECORD_MAX
from ivr.sip.ua import UserAgent
from ivr.web.sessions import Sessions


class Table(NamedTuple):
    """One capped table as the collector reads it."""

    name: str
    entries: int
    limit: int
    refused: int  # entries the cap turned away (or, where it forgets instead, entries forgotten early)


def text_table(gate: TextGate) -> Table:
    return Table("text_numbers", gate.size, gate.max_numbers, gate.counters.texts_refused.get("table_full", 0))


def sip_tables(ua: UserAgent) -> list[Callable[[], Table]]:
    """The SIP core's tables: server transactions; the registrar's bindings, expiry heap, replay record, throttle."""
    reg = ua.registrar
    return [
        lambda: Table(
            "sip_transactions", ua.server_transactions, ua.config.max_transactions, ua.stats.transactions_refused
        ),
        lambda: Table("registrar_bindings", reg.active, reg.binding_limit, 0),
        lambda: Table("registrar_expiry_heap", reg.expiry_entries, reg.expiry_limit, 0),
        lambda: Table("registrar_replay_record", reg.replay_entries, REPLAY_RECORD_MAX, 0),
        # the failed-login throttle of every door (ivr/sip/throttle.py): at its cap the longest idle is forgotten
        lambda: Table("auth_throttle", len(reg.throttle), reg.throttle.settings.max_entries, reg.throttle.evicted),
    ]


def session_table(sessions: Sessions) -> Callable[[], Table]:
    """The callbacks API's logged-out sessions."""
    return lambda: Table("revoked_sessions", sessions.revoked, sessions.max_revoked, sessions.revoked_forgotten)


class TablesCollector(Collector):
    """The tables' sizes and caps, untrusted caller IDs by what was withheld, and texts the cap refused."""

    def __init__(self, gate: TextGate, tables: Iterable[Callable[[], Table]] = ()) -> None:
        self.gate = gate
        self.tables: list[Callable[[], Table]] = [lambda: text_table(gate), *tables]

    def add(self, table: Callable[[], Table]) -> None:
        """A table built after the collector (e.g. the callbacks API's sessions)."""
        self.tables.append(table)

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        tables = [read() for read in self.tables]
        entries = GaugeMetricFamily(
            "frontdesk_bounded_map_entries", "Entries held by a table keyed by remote input", labels=["map"]
        )
        limit = GaugeMetricFamily(
            "frontdesk_bounded_map_limit", "The most entries a table keyed by remote input may hold", labels=["map"]
        )
        refused = CounterMetricFamily(
            "frontdesk_bounded_map_refused",
            "Entries a table's cap turned away (or forgot early), by table",
            labels=["map"],
        )
        for t in tables:
            entries.add_metric([t.name], t.entries)
            limit.add_metric([t.name], t.limit)
            refused.add_metric([t.name], t.refused)
        yield entries
        yield limit
        yield refused
        counters = self.gate.counters
        c = CounterMetricFamily(
            "frontdesk_untrusted_caller_id",
            "What an untrusted caller's claimed number did not get: a text, a callback closed or cancelled",
            labels=["action"],
        )
        for action in UNTRUSTED_ACTIONS:
            c.add_metric([action], counters.untrusted.get(action, 0))
        yield c
        c = CounterMetricFamily(
            "frontdesk_texts_refused",
            "Text messages not sent: over the per-number cap, or the cap's table full",
            labels=["reason"],
        )
        for reason in TEXT_REFUSALS:
            c.add_metric([reason], counters.texts_refused.get(reason, 0))
        yield c

"""Whether the database answers: outage detection, its two log lines, and its metrics.

Theory of operation
-------------------
Every writer on an engine (the callback store's bookings, the call-record
writer, the text outbox's intake) shares one :class:`DatabaseHealth`
(:func:`health_for`). A write that fails with an *outage error*
(:func:`is_outage`: the server refused or dropped the connection, a timeout,
SQLite locked or its disk full) calls :meth:`DatabaseHealth.failed`; the next
write that succeeds calls :meth:`DatabaseHealth.ok`. The first failure of an
outage logs one line and the first success after it logs one more; nothing in
between is logged per call or per write.

While the database is down, writes that can wait (call records, texts) stay
in memory, in order, up to a cap each; beyond it they are dropped and counted
(:meth:`DatabaseHealth.dropped`, logged once per outage). A booking cannot
wait: the caller is told it could not be booked (``ivr/calls/dialer.py``).
See docs/callbacks.md, "When the database is down".
"""

from __future__ import annotations

import logging
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0  # seconds between write attempts while the database is down

# asyncpg's connection-level errors, by class name: the module is optional (SQLite-only installs)
_OUTAGE_NAMES = frozenset(
    {
        "PostgresConnectionError",
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "CannotConnectNowError",
        "AdminShutdownError",
        "CrashShutdownError",
        "OperatorInterventionError",
        "QueryCanceledError",
        "InterfaceError",
        "InternalClientError",
    }
)
_NOT_OUTAGE = ("no such ", "syntax error", "has no column")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or cannot write now (not that the request is wrong)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 6:
        seen += 1
        if isinstance(current, TimeoutError | OSError | ConnectionError):
            return True
        if isinstance(current, sa_exc.DBAPIError):
            if current.connection_invalidated or isinstance(current, sa_exc.InterfaceError):
                return True
            if isinstance(current, sa_exc.OperationalError):
                # SQLite says "locked" or "disk is full" here, but also "no such table": a bug, not an outage
                return not any(part in str(current.orig).lower() for part in _NOT_OUTAGE)
        elif isinstance(current, sa_exc.DisconnectionError | sa_exc.TimeoutError):  # pool exhausted or dead
            return True
        elif isinstance(current, sqlite3.OperationalError):  # the records' fast path calls the driver itself
            return not any(part in str(current).lower() for part in _NOT_OUTAGE)
        elif _outage_class(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _outage_class(exc: BaseException) -> bool:
    return any(cls.__name__ in _OUTAGE_NAMES and "asyncpg" in cls.__module__ for cls in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    """One short line for the log: the innermost cause, without SQL or parameters."""
    inner: BaseException = exc
    while isinstance(inner, sa_exc.DBAPIError) and isinstance(inner.orig, BaseException):
        inner = inner.orig
    text = str(inner).split("\n", 1)[0][:200]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


class DatabaseHealth:
    """Up or down, with the counts behind the ``frontdesk_database_*`` metrics; one per engine."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.up = True
        self.down_since: float | None = None
        self.outages = 0
        self.write_failures: dict[str, int] = {}
        self.dropped_writes: dict[str, int] = {}
        self.waiting: dict[str, Callable[[], int]] = {}  # what each writer holds back, by kind
        self._drop_logged: set[str] = set()

    def failed(self, what: str, exc: BaseException) -> None:
        """A write of ``what`` failed because the database is unreachable: the outage starts (logged once)."""
        self.write_failures[what] = self.write_failures.get(what, 0) + 1
        if not self.up:
            return
        self.up = False
        self.down_since = self.clock()
        self.outages += 1
        self._drop_logged.clear()
        log.error(
            "database unreachable (%s, writing %s): callbacks cannot be booked; call records and texts wait",
            describe(exc),
            what,
        )

    def ok(self) -> None:
        """A write went through: the outage (if any) is over (logged once)."""
        if self.up:
            return
        self.up = True
        lasted = self.clock() - (self.down_since or self.clock())
        self.down_since = None
        log.warning("database reachable again after %.1f s; writing what waited (%d)", lasted, self.writes_waiting())

    def dropped(self, what: str, n: int, cap: int) -> None:
        """``n`` writes of ``what`` were dropped: more than ``cap`` waited. Logged once per outage and kind."""
        self.dropped_writes[what] = self.dropped_writes.get(what, 0) + n
        if what not in self._drop_logged:
            self._drop_logged.add(what)
            log.error("more than %d %s wait for the database: dropping the newest (counted)", cap, what)

    def writes_waiting(self) -> int:
        return sum(count() for count in self.waiting.values())


_healths: weakref.WeakKeyDictionary[Any, DatabaseHealth] = weakref.WeakKeyDictionary()


def health_for(engine: AsyncEngine) -> DatabaseHealth:
    """The one :class:`DatabaseHealth` of ``engine``'s database in this process (made on first use)."""
    health = _healths.get(engine.sync_engine)
    if health is None:
        health = _healths[engine.sync_engine] = DatabaseHealth()
    return health


class DatabaseCollector(Collector):
    """Exports a :class:`DatabaseHealth` to Prometheus when scraped."""

    # every writer's kind, pre-created: bookings, the record writer, the texts' intake and sending,
    # the dispatcher's passes, R10's closings
    KINDS = ("bookings", "call_records", "texts", "text_sending", "dispatcher", "callback_closings")

    def __init__(self, health: DatabaseHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        h = self.health
        yield GaugeMetricFamily(
            "frontdesk_database_up", "1 while the database takes writes, 0 during an outage", int(h.up)
        )
        waiting = GaugeMetricFamily(
            "frontdesk_database_writes_waiting", "Writes held in memory until the database is back", labels=["kind"]
        )
        failures = CounterMetricFamily(
            "frontdesk_database_write_failures",
            "Writes that failed because the database was unreachable",
            labels=["kind"],
        )
        dropped = CounterMetricFamily(
            "frontdesk_database_writes_dropped", "Writes dropped: more waited than the cap allows", labels=["kind"]
        )
        for kind in sorted({*self.KINDS, *h.waiting, *h.write_failures, *h.dropped_writes}):
            count = h.waiting.get(kind)
            waiting.add_metric([kind], count() if count is not None else 0)
            failures.add_metric([kind], h.write_failures.get(kind, 0))
            dropped.add_metric([kind], h.dropped_writes.get(kind, 0))
        yield waiting
        yield failures
        yield dropped
        yield CounterMetricFamily("frontdesk_database_outages", "Outages seen (database unreachable)", h.outages)


__all__ = ["RETRY_INTERVAL", "DatabaseCollector", "DatabaseHealth", "describe", "health_for", "is_outage"]

"""Durable text-message (SMS) outbox: the texts of R7, R9 and R10 are never lost.

Theory of operation
-------------------
:meth:`Outbox.enqueue` inserts a ``text_messages`` row and commits before it
returns, so once the IVR (or the callback store) has enqueued a text, a crash
or a dead SMS gateway cannot lose it. :class:`OutboxDispatcher` is the one
long-lived task that delivers them through a pluggable :class:`TextSender`::

    queued --claim (attempts += 1)--> sending --sender ok--> sent
                                         |--error, attempts <  max--> queued, next_attempt_at = now + back-off
                                         |--error, attempts >= max--> failed
    sending --start-up recovery--> queued

A message is claimed with a conditional ``UPDATE ... WHERE state = 'queued'``
so two dispatchers never send the same row twice in one round. Delivery is
*at least once*: a crash after the gateway accepted a text but before its row
says ``sent`` sends it again after the restart. The webhook carries the
message ``id`` so the gateway can drop such a copy.

Recovery returns every ``sending`` row to ``queued``. That is right for one
dispatcher per database (the embedded default); several router nodes sharing
PostgreSQL must run the dispatcher on one node only.

Calls hand texts over with :meth:`Outbox.submit`, which never waits: the
intake task writes them in order, and while the database is down they wait in
memory up to a cap (docs/callbacks.md, "When the database is down").

The module is long because a text's whole life is here: the table, the
intake that waits through an outage, the dispatcher's claim and retries, the
senders and their metrics; split, the states they share would be spread over
several files.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import DateTime, Index, Integer, String, Text, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from callback import logmask
from callback.base import Base, utcnow
from callback.health import RETRY_INTERVAL, describe, health_for, is_outage

log = logging.getLogger(__name__)

QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"

# reasons become a metric label: a short fixed vocabulary ("hotkey", "self_service", "callback", ...)
_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_ERROR = 500


class TextMessage(Base):
    __tablename__ = "text_messages"
    # the dispatcher's poll: state = 'queued' AND next_attempt_at <= now
    __table_args__ = (
        Index("ix_text_messages_due", "state", "next_attempt_at"),
        # written again after a commit of unknown outcome, a text is not doubled
        Index("uq_text_messages_intake_key", "intake_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    to_number: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    intake_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


# -- metrics --------------------------------------------------------------------


class OutboxMetrics(Collector):
    """The outbox's counts, exported to Prometheus when scraped.

    Plain integers on the hot path (like ``ivr.web.metrics.SipCollector``); given a
    ``registry``, registers itself there. ``reasons`` pre-creates label values.
    """

    def __init__(self, registry: CollectorRegistry | None = None, reasons: Iterable[str] = ()) -> None:
        self.queued: dict[str, int] = dict.fromkeys(reasons, 0)
        self.sent = 0
        self.failed = 0
        self.send_errors = 0
        self.pending = 0
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "frontdesk_text_messages_queued", "Text messages accepted into the outbox, by reason", labels=["reason"]
        )
        for reason, n in sorted(self.queued.items()):
            c.add_metric([reason], n)
        yield c
        yield CounterMetricFamily("frontdesk_text_messages_sent", "Text messages handed to the gateway", self.sent)
        yield CounterMetricFamily(
            "frontdesk_text_messages_failed", "Text messages given up after the last retry", self.failed
        )
        yield CounterMetricFamily(
            "frontdesk_text_message_send_errors", "Failed send attempts (retried or given up)", self.send_errors
        )
        yield GaugeMetricFamily(
            "frontdesk_text_messages_pending", "Text messages queued or being sent (as of the last round)", self.pending
        )


# -- senders --------------------------------------------------------------------


class SendError(Exception):
    """The gateway refused or did not take a message (it will be retried)."""


class TextSender(Protocol):
    """Hands one message to an SMS gateway; returns when it is accepted, raises when not."""

    async def send(self, to: str, body: str, *, reason: str, message_id: int) -> None: ...


class LogSender:
    """Writes messages to the log instead of sending them (development, tests, no gateway yet)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log

    async def send(self, to: str, body: str, *, reason: str, message_id: int) -> None:
        self.log.info("text #%d to %s (%s): %s", message_id, logmask.number(to), reason, logmask.text(body))

    async def close(self) -> None:
        pass


class WebhookSender:
    """POSTs ``{"to", "body", "reason", "id"}`` as JSON to a gateway URL; any non-2xx answer is a failure."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, to: str, body: str, *, reason: str, message_id: int) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        payload = {"to": to, "body": body, "reason": reason, "id": message_id}
        try:
            async with self._session.post(self.url, json=payload) as resp:
                if not 200 <= resp.status < 300:
                    detail = (await resp.text(errors="replace"))[:200]
                    raise SendError(f"gateway answered {resp.status} {resp.reason}: {detail}".rstrip(": "))
        except TimeoutError:
            raise SendError(f"gateway did not answer within {self.timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise SendError(f"gateway unreachable: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def build_sender(
    kind: Literal["log", "webhook"], webhook_url: str | None = None, timeout: float = 5.0
) -> LogSender | WebhookSender:
    """The sender named in the config (``texts.sender``)."""
    if kind == "log":
        return LogSender()
    if kind == "webhook":
        if not webhook_url:
            raise ValueError("the webhook sender needs a webhook_url")
        return WebhookSender(webhook_url, timeout)
    raise ValueError(f"unknown text sender {kind!r}")


# -- the outbox -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Handed:
    """A text handed over with :meth:`Outbox.submit`, not yet written."""

    to: str
    body: str
    reason: str
    at: datetime
    key: str


def _check_text(to: str, body: str, reason: str) -> None:
    if not to or len(to) > 64:
        raise ValueError(f"bad destination number {to!r}")
    if not body:
        raise ValueError("empty text message")
    if not _REASON.fullmatch(reason):
        raise ValueError(f"reason {reason!r} must be a short lower-case word (it is a metric label)")


class Outbox:
    """Accepts text messages durably; wakes the dispatcher.

    :meth:`enqueue` commits before it returns. :meth:`submit` does not wait: the
    text joins an in-memory line that :meth:`run_intake` writes in order; while
    the database is down the line waits (at most ``max_waiting`` texts, beyond
    that new ones are dropped and counted) and is written once it is back. Each
    handed-over text carries an idempotency key, so a batch written again after a
    COMMIT whose outcome was unknown is not doubled.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: OutboxMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        *,
        max_waiting: int = 10_000,
        retry_interval: float = RETRY_INTERVAL,
        write_timeout: float = 10.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or OutboxMetrics()
        self.clock = clock
        self.max_waiting = max_waiting
        self.retry_interval = retry_interval
        self.write_timeout = write_timeout
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._work = asyncio.Event()
        self._handed: deque[_Handed] = deque()
        self._handed_ready = asyncio.Event()
        self.dropped = 0
        self.health = health_for(engine)
        self.health.waiting["texts"] = lambda: len(self._handed)
        insert = sqlite_insert if engine.dialect.name == "sqlite" else postgresql_insert
        self._insert_handed = insert(TextMessage).on_conflict_do_nothing(index_elements=[TextMessage.intake_key])

    async def enqueue(self, to: str, body: str, reason: str) -> int:
        """Store a message for sending; it is committed when this returns. Returns its id."""
        _check_text(to, body, reason)
        now = self.clock()
        msg = TextMessage(
            to_number=to, body=body, reason=reason, created_at=now, state=QUEUED, attempts=0, next_attempt_at=now
        )
        async with self._sessions() as session, session.begin():
            session.add(msg)
        self.metrics.queued[reason] = self.metrics.queued.get(reason, 0) + 1
        self._work.set()
        return msg.id

    def submit(self, to: str, body: str, reason: str) -> None:
        """Hand a text over without waiting (calls, the agents' API); :meth:`run_intake` writes it.

        A text that cannot be sent (bad number, empty body) gets a log line; one beyond
        ``max_waiting`` while the database is down is dropped and counted.
        """
        try:
            _check_text(to, body, reason)
        except ValueError as exc:
            log.warning("text message to %s not queued: %s", logmask.number(to), exc)
            return
        if len(self._handed) >= self.max_waiting:
            self.dropped += 1
            self.health.dropped("texts", 1, self.max_waiting)
            return
        self._handed.append(_Handed(to, body, reason, self.clock(), secrets.token_hex(16)))
        self._handed_ready.set()

    @property
    def waiting(self) -> int:
        """Texts handed over with :meth:`submit` and not yet written."""
        return len(self._handed)

    async def write_handed(self, limit: int = 200) -> int:
        """Write the oldest handed-over texts (up to ``limit``) in one transaction. Returns how many."""
        batch = [self._handed[i] for i in range(min(limit, len(self._handed)))]
        if not batch:
            return 0
        rows = [
            {
                "to_number": t.to,
                "body": t.body,
                "reason": t.reason,
                "created_at": t.at,
                "state": QUEUED,
                "attempts": 0,
                "next_attempt_at": t.at,
                "intake_key": t.key,
            }
            for t in batch
        ]
        async with asyncio.timeout(self.write_timeout), self._sessions() as session, session.begin():
            await session.execute(self._insert_handed, rows)
        for t in batch:
            self._handed.popleft()  # only this task removes from the left: the batch is still at the front
            self.metrics.queued[t.reason] = self.metrics.queued.get(t.reason, 0) + 1
        self._work.set()
        return len(batch)

    async def run_intake(self) -> None:
        """Write handed-over texts in order until cancelled (then once more); while the database is down they wait."""
        try:
            await self._intake()
        finally:
            if self._handed:
                try:
                    await asyncio.shield(self.write_handed(len(self._handed)))
                except Exception as exc:  # noqa: BLE001 - shutting down: say what is lost, once
                    log.error("stopping with %d text message(s) unwritten: %s", len(self._handed), describe(exc))

    async def _intake(self) -> None:
        while True:
            if not self._handed:
                self._handed_ready.clear()
                await self._handed_ready.wait()
            try:
                await self.write_handed()
            except Exception as exc:
                if is_outage(exc):
                    self.health.failed("texts", exc)  # once per outage
                else:
                    log.exception("writing %d text message(s) failed; will retry", len(self._handed))
                await asyncio.sleep(self.retry_interval)
                continue
            self.health.ok()

    async def get(self, message_id: int) -> TextMessage | None:
        async with self._sessions() as session:
            return await session.get(TextMessage, message_id)

    async def counts(self) -> dict[str, int]:
        """Messages by state."""
        async with self._sessions() as session:
            rows = await session.execute(select(TextMessage.state, func.count()).group_by(TextMessage.state))
            return {state: n for state, n in rows.all()}

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a message was enqueued, or after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._work.wait()
        except TimeoutError:
            pass
        self._work.clear()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: ``base * factor**(attempt - 1)`` capped at ``max_delay`` seconds."""

    base: float = 5.0
    factor: float = 2.0
    max_delay: float = 600.0
    max_attempts: int = 8

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        exponent = min(max(attempts - 1, 0), 64)  # past 64 the cap has long won; avoid float overflow
        return float(min(self.base * self.factor**exponent, self.max_delay))


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    to: str
    body: str
    reason: str
    attempts: int


class OutboxDispatcher:
    """Delivers due messages; one instance per database, run as a long-lived task."""

    def __init__(
        self,
        outbox: Outbox,
        sender: TextSender,
        retry: Backoff | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 100,
        concurrency: int = 10,
    ) -> None:
        self.outbox = outbox
        self.sender = sender
        self.retry = retry or Backoff()
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.metrics = outbox.metrics
        self._sessions = async_sessionmaker(outbox.engine, expire_on_commit=False)

    async def recover(self) -> int:
        """Return messages left ``sending`` by a crash to ``queued``, due now. Returns how many."""
        now = self.outbox.clock()
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(TextMessage)
                .where(TextMessage.state == SENDING)
                .values(state=QUEUED, next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
        n = int(getattr(result, "rowcount", 0) or 0)
        if n:
            log.warning("returned %d text message(s) left 'sending' to the queue", n)
        return n

    async def refresh_pending(self) -> int:
        async with self._sessions() as session:
            n = await session.scalar(
                select(func.count()).select_from(TextMessage).where(TextMessage.state.in_((QUEUED, SENDING)))
            )
        self.metrics.pending = n or 0
        return n or 0

    async def dispatch_due(self) -> int:
        """Claim the messages due now (up to ``batch_size``) and send them. Returns how many were claimed."""
        claimed = await self._claim(self.outbox.clock())
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self.concurrency)

        async def deliver(msg: _Claimed) -> None:
            async with gate:
                await self._deliver(msg)

        # a TaskGroup, not gather: if one status write fails the others are cancelled and
        # awaited, so nothing keeps running behind our back (their rows are recovered)
        async with asyncio.TaskGroup() as tg:
            for msg in claimed:
                tg.create_task(deliver(msg))
        return len(claimed)

    async def run(self) -> None:
        """Deliver until cancelled. Database trouble is logged and retried, never fatal."""
        recovered = False
        while True:
            claimed = 0
            try:
                if not recovered:
                    await self.recover()
                    recovered = True
                claimed = await self.dispatch_due()
                await self.refresh_pending()
                self.outbox.health.ok()
            except Exception as exc:
                if is_outage(exc):
                    self.outbox.health.failed("text_sending", exc)  # the outage's one log line, not one a round
                else:
                    log.exception("text outbox round failed; retrying in %.1f s", self.poll_interval)
                # a status write may have failed mid-round; nothing of ours is in flight now,
                # so put anything stuck in 'sending' back in the queue first thing next round
                recovered = False
            if claimed < self.batch_size:
                await self.outbox.wait_for_work(self.poll_interval)

    async def _claim(self, now: datetime) -> list[_Claimed]:
        async with self._sessions() as session, session.begin():
            ids = list(
                await session.scalars(
                    select(TextMessage.id)
                    .where(TextMessage.state == QUEUED, TextMessage.next_attempt_at <= now)
                    .order_by(TextMessage.next_attempt_at, TextMessage.id)
                    .limit(self.batch_size)
                )
            )
            if not ids:
                return []
            # the state condition makes the claim safe against another dispatcher
            rows = await session.execute(
                update(TextMessage)
                .where(TextMessage.id.in_(ids), TextMessage.state == QUEUED)
                .values(state=SENDING, attempts=TextMessage.attempts + 1)
                .returning(
                    TextMessage.id, TextMessage.to_number, TextMessage.body, TextMessage.reason, TextMessage.attempts
                )
                .execution_options(synchronize_session=False)
            )
            claimed = [_Claimed(*row) for row in rows.all()]
        claimed.sort(key=lambda m: ids.index(m.id))
        return claimed

    async def _deliver(self, msg: _Claimed) -> None:
        try:
            await self.sender.send(msg.to, msg.body, reason=msg.reason, message_id=msg.id)
        except Exception as exc:  # noqa: BLE001 - any sender failure is a failed attempt, retried
            error = (str(exc) or type(exc).__name__)[:_MAX_ERROR]
            self.metrics.send_errors += 1
            await self._failed(msg, error)
            return
        now = self.outbox.clock()
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(TextMessage)
                .where(TextMessage.id == msg.id, TextMessage.state == SENDING)
                .values(state=SENT, sent_at=now, last_error=None)
                .execution_options(synchronize_session=False)
            )
        self.metrics.sent += 1

    async def _failed(self, msg: _Claimed, error: str) -> None:
        now = self.outbox.clock()
        give_up = msg.attempts >= self.retry.max_attempts
        if give_up:
            values: dict[str, object] = {"state": FAILED, "last_error": error}
            log.error("text #%d (%s) given up after %d attempts: %s", msg.id, msg.reason, msg.attempts, error)
        else:
            delay = self.retry.delay(msg.attempts)
            values = {"state": QUEUED, "last_error": error, "next_attempt_at": now + timedelta(seconds=delay)}
            log.warning("text #%d attempt %d failed (%s); retrying in %.3g s", msg.id, msg.attempts, error, delay)
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(TextMessage)
                .where(TextMessage.id == msg.id, TextMessage.state == SENDING)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if give_up:
            self.metrics.failed += 1


__all__ = [
    "FAILED",
    "QUEUED",
    "SENDING",
    "SENT",
    "Backoff",
    "LogSender",
    "Outbox",
    "OutboxDispatcher",
    "OutboxMetrics",
    "SendError",
    "TextMessage",
    "TextSender",
    "WebhookSender",
    "build_sender",
]

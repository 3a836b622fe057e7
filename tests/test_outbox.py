"""Text-message outbox: durable enqueue, retries with back-off, crash recovery, webhook delivery, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support.clock import SteppedClock
from support.waiting import wait_until_async

from callback import base, db
from callback.outbox import (
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    Backoff,
    LogSender,
    Outbox,
    OutboxDispatcher,
    OutboxMetrics,
    SendError,
    WebhookSender,
    build_sender,
)
from ivr.settings.config import ConfigError, parse_config

ServerFactory = Callable[..., Awaitable[TestServer]]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlite_url(tmp_path / "outbox.db"))
    await db.init_schema(eng)
    yield eng
    await eng.dispose()


class RecordingSender:
    """A sender that records what it was given and fails while ``failures`` > 0."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str, str, int]] = []

    async def send(self, to: str, body: str, *, reason: str, message_id: int) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise SendError("gateway down")
        self.sent.append((to, body, reason, message_id))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- enqueue --------------------------------------------------------------------


async def test_enqueue_is_committed_before_it_returns(engine: AsyncEngine, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    outbox = Outbox(engine, OutboxMetrics(registry))
    msg_id = await outbox.enqueue("+15550100", "Your callback is booked.", "callback")
    # another engine (another process, after a crash) sees it
    other = create_async_engine(sqlite_url(tmp_path / "outbox.db"))
    try:
        row = await Outbox(other).get(msg_id)
    finally:
        await other.dispose()
    assert row is not None
    assert (row.to_number, row.body, row.reason, row.state, row.attempts) == (
        "+15550100",
        "Your callback is booked.",
        "callback",
        QUEUED,
        0,
    )
    assert row.sent_at is None and row.last_error is None
    assert base.utc(row.next_attempt_at) <= datetime.now(UTC)
    assert sample(registry, "frontdesk_text_messages_queued_total", reason="callback") == 1


@pytest.mark.parametrize(
    ("to", "body", "reason", "match"),
    [
        ("", "hi", "hotkey", "destination"),
        ("+1" * 40, "hi", "hotkey", "destination"),
        ("+15550100", "", "hotkey", "empty"),
        ("+15550100", "hi", "Hot Key", "reason"),
        ("+15550100", "hi", "x" * 40, "reason"),
    ],
)
async def test_enqueue_refuses_bad_messages(engine: AsyncEngine, to: str, body: str, reason: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await Outbox(engine).enqueue(to, body, reason)
    assert await Outbox(engine).counts() == {}


def test_retry_policy_backs_off_exponentially_up_to_the_cap() -> None:
    policy = Backoff(base=1.0, factor=2.0, max_delay=5.0, max_attempts=10)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert policy.delay(10_000) == 5.0  # no float overflow


# -- dispatching, stepped on a virtual clock ------------------------------------------


async def test_failed_attempts_are_retried_with_back_off_then_sent(engine: AsyncEngine) -> None:
    clock, registry = SteppedClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC)), CollectorRegistry()
    outbox = Outbox(engine, OutboxMetrics(registry), clock=clock)
    sender = RecordingSender(failures=2)
    dispatcher = OutboxDispatcher(outbox, sender, Backoff(base=10, factor=3, max_delay=60, max_attempts=5))
    msg_id = await outbox.enqueue("+15550100", "Press 2 next time.", "hotkey")

    assert await dispatcher.dispatch_due() == 1  # attempt 1 fails
    row = await outbox.get(msg_id)
    assert row is not None and row.state == QUEUED and row.attempts == 1 and row.last_error == "gateway down"
    assert base.utc(row.next_attempt_at) == clock.now + timedelta(seconds=10)
    assert await dispatcher.dispatch_due() == 0  # not due yet
    clock.advance(10)
    assert await dispatcher.dispatch_due() == 1  # attempt 2 fails, next in 30 s
    clock.advance(29)
    assert await dispatcher.dispatch_due() == 0
    clock.advance(1)
    assert await dispatcher.dispatch_due() == 1  # attempt 3 succeeds

    row = await outbox.get(msg_id)
    assert row is not None and row.state == SENT and row.attempts == 3 and row.last_error is None
    assert row.sent_at is not None and base.utc(row.sent_at) == clock.now
    assert sender.sent == [("+15550100", "Press 2 next time.", "hotkey", msg_id)]
    assert await dispatcher.refresh_pending() == 0
    assert sample(registry, "frontdesk_text_message_send_errors_total") == 2
    assert sample(registry, "frontdesk_text_messages_sent_total") == 1
    assert sample(registry, "frontdesk_text_messages_failed_total") == 0


async def test_gives_up_after_max_attempts(engine: AsyncEngine) -> None:
    clock, registry = SteppedClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC)), CollectorRegistry()
    outbox = Outbox(engine, OutboxMetrics(registry), clock=clock)
    dispatcher = OutboxDispatcher(outbox, RecordingSender(failures=99), Backoff(base=1, factor=2, max_attempts=3))
    msg_id = await outbox.enqueue("+15550100", "Sorry, we could not call back in time.", "callback_late")
    for _ in range(3):
        assert await dispatcher.dispatch_due() == 1
        clock.advance(3600)
    assert await dispatcher.dispatch_due() == 0
    row = await outbox.get(msg_id)
    assert row is not None and row.state == FAILED and row.attempts == 3 and row.last_error == "gateway down"
    assert await outbox.counts() == {FAILED: 1}
    assert sample(registry, "frontdesk_text_message_send_errors_total") == 3
    assert sample(registry, "frontdesk_text_messages_failed_total") == 1
    assert await dispatcher.refresh_pending() == 0


async def test_due_messages_go_out_oldest_first_in_batches(engine: AsyncEngine) -> None:
    clock = SteppedClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    outbox = Outbox(engine, clock=clock)
    sender = RecordingSender()
    dispatcher = OutboxDispatcher(outbox, sender, batch_size=2, concurrency=1)
    ids = []
    for i in range(5):
        ids.append(await outbox.enqueue(f"+1555010{i}", f"text {i}", "self_service"))
        clock.advance(1)
    assert await dispatcher.dispatch_due() == 2
    assert await dispatcher.refresh_pending() == 3
    assert await dispatcher.dispatch_due() == 2
    assert await dispatcher.dispatch_due() == 1
    assert [m[3] for m in sender.sent] == ids


async def test_a_crash_while_sending_loses_nothing(tmp_path: Path) -> None:
    """The process dies with a message 'sending': the next start sends it."""
    url = sqlite_url(tmp_path / "crash.db")
    first = create_async_engine(url)
    await db.init_schema(first)
    outbox = Outbox(first)
    msg_id = await outbox.enqueue("+15550100", "Your callback is booked.", "callback")

    gateway_hangs = asyncio.Event()

    class Hanging:
        async def send(self, to: str, body: str, *, reason: str, message_id: int) -> None:
            gateway_hangs.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(OutboxDispatcher(outbox, Hanging(), poll_interval=0.01).run())
    await asyncio.wait_for(gateway_hangs.wait(), 5)
    await stop(task)  # the "crash": the row is left 'sending'
    row = await outbox.get(msg_id)
    assert row is not None and row.state == SENDING and row.attempts == 1
    await first.dispose()

    second = create_async_engine(url)
    try:
        registry = CollectorRegistry()
        outbox2 = Outbox(second, OutboxMetrics(registry))
        sender = RecordingSender()
        task = asyncio.create_task(OutboxDispatcher(outbox2, sender, poll_interval=0.01).run())

        async def delivered() -> bool:
            return await outbox2.counts() == {SENT: 1} and sample(registry, "frontdesk_text_messages_pending") == 0

        await wait_until_async("the message delivered", delivered)
        await stop(task)
        assert sender.sent == [("+15550100", "Your callback is booked.", "callback", msg_id)]
        row = await outbox2.get(msg_id)
        assert row is not None and row.attempts == 2
        assert sample(registry, "frontdesk_text_messages_pending") == 0
    finally:
        await second.dispose()


async def test_run_survives_a_broken_database_round(engine: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(engine)
    dispatcher = OutboxDispatcher(outbox, RecordingSender(), poll_interval=0.01)
    real_claim = dispatcher._claim
    calls = 0

    async def flaky_claim(now: datetime) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk I/O error")
        return await real_claim(now)

    dispatcher._claim = flaky_claim  # type: ignore[method-assign]
    await outbox.enqueue("+15550100", "hello", "hotkey")
    task = asyncio.create_task(dispatcher.run())

    async def delivered() -> bool:
        return await outbox.counts() == {SENT: 1}

    await wait_until_async("the message delivered", delivered)
    await stop(task)
    assert "database unreachable (OSError: disk I/O error, writing text_sending)" in caplog.text  # logged once


# -- the webhook sender against a real HTTP receiver ----------------------------------


class Receiver:
    """An SMS gateway stand-in: answers 503 to the first ``failures`` requests."""

    def __init__(self, failures: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.failures = failures
        self.status = status
        self.delay = delay
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sms", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.requests.append(payload)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503, text="gateway overloaded")
        return web.json_response({"accepted": payload["id"]}, status=self.status)


async def test_webhook_down_then_up_delivers_everything_once(
    engine: AsyncEngine, aiohttp_server: ServerFactory
) -> None:
    receiver = Receiver(failures=3)
    server = await aiohttp_server(receiver.app(), host="127.0.0.1")
    registry = CollectorRegistry()
    outbox = Outbox(engine, OutboxMetrics(registry, reasons=("hotkey", "self_service")))
    sender = WebhookSender(str(server.make_url("/sms")), timeout=2.0)
    dispatcher = OutboxDispatcher(
        outbox, sender, Backoff(base=0.01, factor=2, max_delay=0.05, max_attempts=10), poll_interval=0.01
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        ids = [await outbox.enqueue("+1555010" + str(i), f"self-service: text {i}", "self_service") for i in range(3)]

        async def all_sent() -> bool:
            # the pending gauge is refreshed at the end of each round
            return await outbox.counts() == {SENT: 3} and sample(registry, "frontdesk_text_messages_pending") == 0

        await wait_until_async("every message sent", all_sent)
    finally:
        await stop(task)
        await sender.close()

    delivered = [r for r in receiver.requests]
    assert len(delivered) == 3 + 3  # three refused, then each once
    accepted = {r["id"] for r in delivered[3:]}
    assert accepted == set(ids)
    assert delivered[-1].keys() == {"to", "body", "reason", "id"}
    by_id = {r["id"]: r for r in delivered}
    assert by_id[ids[0]] == {"to": "+15550100", "body": "self-service: text 0", "reason": "self_service", "id": ids[0]}
    assert sample(registry, "frontdesk_text_messages_queued_total", reason="self_service") == 3
    assert sample(registry, "frontdesk_text_messages_sent_total") == 3
    assert sample(registry, "frontdesk_text_message_send_errors_total") == 3
    assert sample(registry, "frontdesk_text_messages_failed_total") == 0
    assert sample(registry, "frontdesk_text_messages_pending") == 0
    text = generate_latest(registry).decode()
    assert 'frontdesk_text_messages_queued_total{reason="hotkey"} 0.0' in text  # pre-created label


async def test_gateway_down_across_a_restart(tmp_path: Path, aiohttp_server: ServerFactory) -> None:
    """Gateway unreachable, dispatcher stopped; later the gateway is up and a new dispatcher sends."""
    url = sqlite_url(tmp_path / "restart.db")
    first = create_async_engine(url)
    await db.init_schema(first)
    dead = WebhookSender("http://127.0.0.1:9/sms", timeout=1.0)  # discard port: connection refused
    outbox = Outbox(first)
    dispatcher = OutboxDispatcher(outbox, dead, Backoff(base=0.01, max_delay=0.01, max_attempts=50), 0.01)
    msg_id = await outbox.enqueue("+15550100", "We will call you back.", "callback")
    task = asyncio.create_task(dispatcher.run())

    async def tried_twice() -> bool:
        row = await outbox.get(msg_id)
        return row is not None and row.attempts >= 2

    await wait_until_async("a second try", tried_twice)
    await stop(task)
    await dead.close()
    row = await outbox.get(msg_id)
    assert row is not None and row.state in (QUEUED, SENDING)
    assert row.last_error is not None and "unreachable" in row.last_error
    await first.dispose()

    receiver = Receiver()
    server = await aiohttp_server(receiver.app(), host="127.0.0.1")
    second = create_async_engine(url)
    live = WebhookSender(str(server.make_url("/sms")))
    try:
        outbox2 = Outbox(second)
        task = asyncio.create_task(OutboxDispatcher(outbox2, live, poll_interval=0.01).run())

        async def sent() -> bool:
            return await outbox2.counts() == {SENT: 1}

        await wait_until_async("the message sent", sent)
        await stop(task)
    finally:
        await live.close()
        await second.dispose()
    assert [r["id"] for r in receiver.requests] == [msg_id]


@pytest.mark.parametrize(
    ("receiver", "timeout", "match"),
    [
        (Receiver(status=404), 2.0, "gateway answered 404"),
        (Receiver(failures=1), 2.0, "gateway answered 503 .*gateway overloaded"),
        (Receiver(delay=0.5), 0.1, "did not answer within 0.1 s"),
    ],
)
async def test_webhook_failures_raise_send_error(
    receiver: Receiver, timeout: float, match: str, aiohttp_server: ServerFactory
) -> None:
    server = await aiohttp_server(receiver.app(), host="127.0.0.1")
    sender = WebhookSender(str(server.make_url("/sms")), timeout=timeout)
    try:
        with pytest.raises(SendError, match=match):
            await sender.send("+15550100", "hi", reason="hotkey", message_id=7)
    finally:
        await sender.close()


async def test_log_sender_logs_the_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callback.outbox")
    sender = build_sender("log")
    assert isinstance(sender, LogSender)
    await sender.send("+15550100", "Press 2 for the outage update.", reason="hotkey", message_id=3)
    # masked by default (callback/logmask.py): the last 3 digits, the text's length
    assert "text #3 to ******100 (hotkey): <text, 30 characters>" in caplog.text
    assert "15550100" not in caplog.text and "outage" not in caplog.text


def test_build_sender() -> None:
    webhook = build_sender("webhook", "http://127.0.0.1:8999/sms", 3.0)
    assert isinstance(webhook, WebhookSender) and webhook.timeout.total == 3.0
    with pytest.raises(ValueError, match="webhook_url"):
        build_sender("webhook", None)


# -- config -------------------------------------------------------------------------


def test_texts_config_defaults_and_values() -> None:
    cfg = parse_config("")
    assert cfg.texts.sender == "log" and cfg.texts.webhook_url is None
    assert (cfg.texts.retry.base, cfg.texts.retry.factor, cfg.texts.retry.max_attempts) == (5.0, 2.0, 8)
    cfg = parse_config(
        "texts:\n  sender: webhook\n  webhook_url: https://sms.example.com/send\n  timeout: 3\n"
        "  poll_interval: 0.5\n  retry:\n    base: 2\n    factor: 3\n    max_delay: 120\n    max_attempts: 4\n"
    )
    assert cfg.texts.webhook_url == "https://sms.example.com/send"
    assert (cfg.texts.timeout, cfg.texts.poll_interval) == (3.0, 0.5)
    assert cfg.texts.retry.model_dump() == {"base": 2.0, "factor": 3.0, "max_delay": 120.0, "max_attempts": 4}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("texts:\n  sender: webhook\n", "cfg.yaml:1: texts.webhook_url: sender is 'webhook': set webhook_url"),
        ("texts:\n  webhook_url: ftp://x/y\n", "cfg.yaml:2: texts.webhook_url: 'ftp://x/y' is not an http"),
        ("texts:\n  sender: pigeon\n", "cfg.yaml:2: texts.sender: Input should be 'log' or 'webhook'"),
        ("texts:\n  retry:\n    base: 10\n    max_delay: 5\n", "cfg.yaml:4: texts.retry.max_delay: max_delay (5.0 s)"),
        ("texts:\n  retry:\n    max_attempts: 0\n", "cfg.yaml:3: texts.retry.max_attempts: Input should be greater"),
        ("texts:\n  timeout: 0\n", "cfg.yaml:2: texts.timeout: Input should be greater than 0"),
    ],
)
def test_texts_config_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert str(info.value).startswith(expected), str(info.value)

"""Wires the server together in one visible place: ``create_app(config)``.

The aiohttp application owns everything long-lived through one
``cleanup_ctx``: the database engine and call-record writer task, and the
SIP shell with its user agent and router. Leaving the context stops the
SIP listeners, flushes the last records and closes the engine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from callback import db as callback_db
from callback import rules as callback_rules
from callback.outbox import Backoff, Outbox, OutboxDispatcher, OutboxMetrics, build_sender
from callback.store import CallbackStore
from ivr.calls.dialer import CallbackDesk
from ivr.calls.ivrcall import IvrServices
from ivr.calls.queues import LiveQueues
from ivr.calls.router import CallRouter, RouterSettings
from ivr.flow.config import groups_of_function
from ivr.flow.program import compile_ivr
from ivr.media.prompts import PromptStore
from ivr.settings.config import Config
from ivr.settings.prompts import load_prompts
from ivr.settings.queues import in_schedule, model_from_config, tier_of
from ivr.sip.registrar import Credential, Registrar, RegistrarSettings
from ivr.sip.transaction import TimerValues
from ivr.sip.ua import UaConfig, UserAgent
from ivr.storage.notices import NoticeBoard
from ivr.storage.records import CallRecorder, RecordsBase, create_engine, init_schema
from ivr.storage.upgrade import add_missing_columns
from ivr.transport.rtp import MediaShell
from ivr.transport.sip import SipShell
from ivr.web import admin, callbackapi, queueapi
from ivr.web import health as http
from ivr.web.metrics import CallbackCollector, IvrCollector, QueueCollector, SipCollector
from queueing.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The live parts, reachable from handlers and tests."""

    config: Config
    ua: UserAgent
    router: CallRouter
    shell: SipShell
    recorder: CallRecorder
    registry: CollectorRegistry
    outbox: Outbox
    notices: NoticeBoard


CONFIG = web.AppKey("config", Config)
PROMPTS = web.AppKey("prompts", PromptStore)
RUNTIME = web.AppKey("runtime", Runtime)


def ua_config(config: Config) -> UaConfig:
    sip = config.sip
    return UaConfig(
        host=sip.public_address or sip.listen,
        port=sip.port,
        user_agent=sip.user_agent,
        timers=TimerValues(sip.timers.t1, sip.timers.t2, sip.timers.t4),
        max_calls=sip.max_calls,
        rtp_port_min=config.media.rtp_port_min,
        rtp_port_max=config.media.rtp_port_max,
    )


def registrar_for(config: Config) -> Registrar:
    """Agents' logins from the config; the nonce secret is new each start (old nonces come back stale)."""
    reg = config.registrar
    settings = RegistrarSettings(
        realm=config.sip.realm,
        min_expires=reg.min_expires,
        max_expires=reg.max_expires,
        default_expires=reg.default_expires,
        nonce_lifetime=reg.nonce_lifetime,
    )
    agents = {name: Credential(a.ha1, a.display_name) for name, a in config.agents.items()}
    return Registrar(settings, agents, secrets.token_bytes(32))


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    engine = create_engine(config.storage.url)
    await init_schema(engine)
    await callback_db.init_schema(engine)
    await add_missing_columns(engine, RecordsBase.metadata, callback_db.Base.metadata)
    registry = CollectorRegistry()
    notices = NoticeBoard.from_settings(engine, config.ivr)
    await notices.load()
    texts = config.texts
    outbox = Outbox(engine, OutboxMetrics(registry, reasons=("hotkey", "self_service", "callback")))
    sender = build_sender(texts.sender, texts.webhook_url, texts.timeout)
    retry = Backoff(texts.retry.base, texts.retry.factor, texts.retry.max_delay, texts.retry.max_attempts)
    dispatcher = OutboxDispatcher(outbox, sender, retry, poll_interval=texts.poll_interval)
    recorder = CallRecorder(engine, config.storage.flush_interval)
    writer = asyncio.create_task(recorder.run(), name="call-record-writer")

    # text messages asked for by calls: handed over at once, committed by this task
    texts_in: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    intake = asyncio.create_task(_text_intake(texts_in, outbox), name="text-intake")

    loop = asyncio.get_running_loop()
    ua = UserAgent(ua_config(config), rng=random.Random(), registrar=registrar_for(config))
    sip = config.sip
    prompts = app.get(PROMPTS)
    if prompts is None:
        prompts = await asyncio.to_thread(load_prompts, config)
    media = MediaShell(
        sip.public_address or sip.listen,
        config.media.rtp_port_min,
        config.media.rtp_port_max,
        lambda stream, events: router.on_media_events(stream, events),
        lambda stream: router.on_media_timeout(stream),
        config.media.timeout,
    )
    recordings = Path(config.media.recordings_dir)
    recordings.mkdir(parents=True, exist_ok=True)
    ivr = IvrServices(
        program=compile_ivr(config.ivr),
        prompts=prompts,
        media=media,
        groups_of=groups_of_function(config.ivr),
        notices_for=notices.active_for,
        send_text=lambda to, body, reason: texts_in.put_nowait((to, body, reason)),
        recordings_dir=recordings,
    )
    queues = LiveQueues(
        Engine(model_from_config(config)),
        ua,
        media,
        loop.time,
        loop,
        lambda queue, groups: tier_of(config.queues[queue], groups),
    )
    queues.connected_line = sip.connected_line
    ivr.queues = queues
    ivr.surge = lambda: queues.engine.surge

    # registrations change inside the SIP core's receive/timer: act on them just after
    cbs = config.callbacks
    store = CallbackStore(
        engine,
        callback_rules.RetryPolicy(cbs.retry.max_attempts, timedelta(seconds=cbs.retry.delay)),
        lease=timedelta(seconds=cbs.lease_seconds),
    )
    desk = CallbackDesk(store, cbs, queues, ua, media, loop, ivr.send_text)
    ivr.callbacks = desk
    queues.on_connected = desk.reached_agent  # R10
    app[callbackapi.CALLBACKS] = callbackapi.CallbackService(
        store=store,
        settings=cbs,
        dialer=desk,
        secret=secrets.token_bytes(32),
        recordings_dir=recordings,
        send_text=ivr.send_text,
        registrar=ua.registrar,
    )

    def registration_changed(agent: str, up: bool) -> None:
        loop.call_soon(queues.on_registration, agent, up)

    ua.registrar.on_change = registration_changed
    router = CallRouter(
        ua,
        RouterSettings(ring_limit=sip.ring_limit, answer_delay=sip.answer_delay, hold_time=sip.hold_time),
        on_record=recorder.add,
        wall_offset=time.time() - loop.time(),
        ivr=ivr,
        clock=loop.time,
    )
    shell = SipShell(ua, router.handle)
    router.pump = shell.pump
    queues.pump = shell.pump
    desk.pump = shell.pump
    await shell.start(sip.listen, sip.port, list(sip.transports))
    if sip.port == 0:
        # an ephemeral port (tests): write the real one into Contact/Via
        ua.set_local_port(shell.udp_port or shell.tcp_port or 0)
    registry.register(SipCollector(ua, lambda: recorder.backlog, lambda: recorder.write_errors))
    registry.register(IvrCollector(ivr.metrics, media))
    registry.register(QueueCollector(lambda: queues.engine, lambda: queues.outbound_paused, queues.counters))
    registry.register(CallbackCollector(desk.counters))
    app[RUNTIME] = Runtime(config, ua, router, shell, recorder, registry, outbox, notices)
    app[admin.ADMIN] = admin.AdminState(engine, notices)
    app[queueapi.QUEUES] = queues
    texter = asyncio.create_task(dispatcher.run(), name="text-outbox")
    scheduler = asyncio.create_task(_surge_schedule(config, queues), name="surge-schedule")
    dispatcher_task = asyncio.create_task(desk.run(), name="callback-dispatcher")
    try:
        yield
    finally:
        await shell.stop()
        queues.close()
        media.close_all()
        for task in (writer, intake, texter, scheduler, dispatcher_task):
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await sender.close()
        await engine.dispose()


async def _surge_schedule(config: Config, queues: LiveQueues, every: float = 15.0) -> None:
    """Daily surge windows (local time) become schedule switches of the engine."""
    if not config.surge.schedule:
        return
    inside = False
    while True:
        now_inside = in_schedule(config.surge, datetime.now())
        if now_inside != inside:
            inside = now_inside
            queues.surge_switch(inside, "schedule")
        await asyncio.sleep(every)


async def _text_intake(queue: asyncio.Queue[tuple[str, str, str]], outbox: Outbox) -> None:
    while True:
        to, body, reason = await queue.get()
        try:
            await outbox.enqueue(to, body, reason)
        except ValueError as exc:
            log.warning("text message to %r not queued: %s", to, exc)


def create_app(config: Config, prompts: PromptStore | None = None) -> web.Application:
    """The server. ``prompts`` already rendered (the CLI does it first) saves a second pass."""
    app = web.Application()
    app[CONFIG] = config
    if prompts is not None:
        app[PROMPTS] = prompts
    app.cleanup_ctx.append(_runtime_ctx)
    http.setup_routes(app)
    admin.setup_admin_routes(app, config.admin)
    queueapi.setup_queue_routes(app, config.admin)
    callbackapi.setup_callback_routes(app, config.callbacks)
    return app

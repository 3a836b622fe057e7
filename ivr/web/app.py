"""Wires the server together in one visible place: ``create_app(config)``.

The aiohttp application owns everything long-lived through one
``cleanup_ctx``. Each part is built complete by a build function, in
dependency order: storage, text messages, the SIP user agent and the RTP
shell, the live queues, the callback dialer, the IVR services, the router,
then the SIP shell that hands the router its events. Every long-lived task is
started there and cancelled and awaited on the way out, in reverse order:
the SIP listeners stop first, the last call records are flushed, the
database engine is closed last. Before that way out, SIGTERM drains the
server (``ivr/web/lifecycle.py``, which runs the application).

Two knots are cut by a channel built before both ends:

- The SIP shell hands the core's events to the router, yet the router's
  media events, the live queues (their timers, the agents' buttons) and the
  dialer act on the core outside the shell's own turn and need what they
  queued sent. They are given ``wake`` (an ``asyncio.Event``'s ``set``); one
  task flushes through the shell, once per loop turn however often woken.
- The registrar reports agents' phones coming and going from inside the SIP
  core, which is built before the live queues; it puts the changes on a
  queue that one task hands to the live queues just after.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine

from callback import db as callback_db
from callback import rules as callback_rules
from callback.base import Base as CallbacksBase
from callback.base import create_engine
from callback.health import DatabaseCollector, health_for
from callback.outbox import Backoff, Outbox, OutboxDispatcher, OutboxMetrics, build_sender
from callback.store import CallbackStore
from ivr.calls.dialer import CallbackDesk
from ivr.calls.ivrcall import IvrServices, MediaEventSink
from ivr.calls.queues import LiveQueues
from ivr.calls.router import CallRouter, RouterSettings
from ivr.calls.trust import TrustCounters, identify, text_gate
from ivr.flow.program import compile_ivr
from ivr.media.prompts import PromptStore
from ivr.settings.callbacks import CallbackSettings
from ivr.settings.config import Config
from ivr.settings.flows import groups_of_function
from ivr.settings.prompts import load_prompts
from ivr.settings.queues import in_schedule, model_from_config, tier_of
from ivr.sip.registrar import Credential, Registrar, RegistrarSettings
from ivr.sip.throttle import AuthThrottle, ThrottleSettings
from ivr.sip.transaction import TimerValues
from ivr.sip.ua import UaConfig, UserAgent
from ivr.storage.notices import NoticeBoard
from ivr.storage.records import CallRecorder, RecordsBase, init_schema
from ivr.storage.upgrade import add_missing_columns
from ivr.transport.rtp import MediaShell
from ivr.transport.sip import SipShell
from ivr.web import admin, queueapi, routes, sessions
from ivr.web.clustermetrics import AgentCallCollector, ClusterCollector, LostCallersCollector, NodeRegistry
from ivr.web.flood import FloodCollector, admission_for
from ivr.web.keys import CONFIG, PROMPTS, RUNTIME, Runtime
from ivr.web.lifecycle import DRAIN, Drain, DrainCollector
from ivr.web.mapmetrics import TablesCollector, session_table, sip_tables
from ivr.web.metrics import CallbackCollector, IvrCollector, QueueCollector, SipCollector
from ivr.web.serverheader import set_server_header
from ivr.web.tcpmetrics import TcpCollector
from queueing.engine import Engine

log = logging.getLogger(__name__)

SendText = Callable[[str, str, str], None]  # (to, body, reason): handed over at once, committed by a task


# -- settings to parts ---------------------------------------------------------------------------
def ua_config(config: Config) -> UaConfig:
    """Where our SIP says we are: sip.public_address (or listen), or a cluster node's advertised addresses."""
    sip, cluster = config.sip, config.cluster
    host, port = sip.public_address or sip.listen, sip.port
    if cluster.enabled and cluster.advertise_sip is not None:
        # in-dialog requests come back through Kamailio to this Contact: the address it reaches this node at
        host, _, number = cluster.advertise_sip.rpartition(":")
        host, port = host.strip("[]"), int(number)
    return UaConfig(
        host=host,
        port=port,
        media_host=cluster.advertise_rtp if cluster.enabled else None,
        user_agent=sip.user_agent,
        timers=TimerValues(sip.timers.t1, sip.timers.t2, sip.timers.t4),
        max_calls=sip.max_calls,
        max_transactions=config.security.limits.sip_transactions,
        rtp_port_min=config.media.rtp_port_min,
        rtp_port_max=config.media.rtp_port_max,
    )


def registrar_for(
    config: Config,
    on_change: Callable[[str, bool], None] | None = None,
    on_bindings: Callable[[str], None] | None = None,
) -> Registrar:
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
    throttle = AuthThrottle(ThrottleSettings(**config.security.auth.model_dump()), config.security.trusts)
    return Registrar(settings, agents, secrets.token_bytes(32), on_change, throttle, on_bindings)


def router_settings(config: Config) -> RouterSettings:
    sip = config.sip
    return RouterSettings(ring_limit=sip.ring_limit, answer_delay=sip.answer_delay, hold_time=sip.hold_time)


def callback_store(engine: AsyncEngine, settings: CallbackSettings) -> CallbackStore:
    """The callback list with the config's retries and claim lease (the server and ``frontdesk handover``)."""
    return CallbackStore(
        engine,
        callback_rules.RetryPolicy(settings.retry.max_attempts, timedelta(seconds=settings.retry.delay)),
        lease=timedelta(seconds=settings.lease_seconds),
    )


# -- build functions, in the order _runtime_ctx calls them -----------------------------------------
async def open_storage(config: Config, stack: AsyncExitStack) -> AsyncEngine:
    """The database with every table up to date; disposed on the way out."""
    engine = create_engine(config.storage.url)
    stack.push_async_callback(engine.dispose)
    await init_schema(engine)
    await callback_db.init_schema(engine)
    await add_missing_columns(engine, RecordsBase.metadata, CallbacksBase.metadata)
    return engine


def start_texts(
    config: Config, engine: AsyncEngine, registry: CollectorRegistry, stack: AsyncExitStack
) -> tuple[Outbox, SendText]:
    """The text-message outbox and its sender task; calls hand texts over without waiting for the commit."""
    texts = config.texts
    outbox = Outbox(engine, OutboxMetrics(registry, reasons=("hotkey", "self_service", "callback")))
    sender = build_sender(texts.sender, texts.webhook_url, texts.timeout)
    stack.push_async_callback(sender.close)
    retry = Backoff(texts.retry.base, texts.retry.factor, texts.retry.max_delay, texts.retry.max_attempts)
    dispatcher = OutboxDispatcher(outbox, sender, retry, poll_interval=texts.poll_interval)
    start_task(stack, dispatcher.run(), "text-outbox")
    registry.register(DatabaseCollector(health_for(engine)))  # frontdesk_database_*: up, writes waiting
    start_task(stack, outbox.run_intake(), "text-intake")  # texts wait, in order, while the database is down
    return outbox, outbox.submit


def media_shell(config: Config, sink: MediaEventSink, stack: AsyncExitStack) -> MediaShell:
    sip, media = config.sip, config.media
    shell = MediaShell(
        sip.public_address or sip.listen,
        media.rtp_port_min,
        media.rtp_port_max,
        sink.on_events,
        sink.on_timeout,
        media.timeout,
        trusts=config.security.trusts,
        on_failure=sink.on_failure,
    )
    stack.callback(shell.close_all)
    return shell


def live_queues(
    config: Config, ua: UserAgent, media: MediaShell, wake: Callable[[], None], stack: AsyncExitStack
) -> LiveQueues:
    loop = asyncio.get_running_loop()
    model = model_from_config(config)
    cluster = None
    if config.cluster.enabled:
        # cluster mode: the engine is this node's replica of the shared log (docs/cluster.md), on the wall clock
        from ivr.cluster.coordinator import Coordinator
        from ivr.cluster.log import ClusterLog

        cluster = ClusterLog(config.cluster, lambda: Coordinator(model), lambda *entry: queues.on_applied(*entry))
    queues = LiveQueues(
        Engine(model),
        ua,
        media,
        loop.time if cluster is None else time.time,
        loop,
        lambda queue, groups: tier_of(config.queues[queue], groups),
        wake=wake,
        connected_line=config.sip.connected_line,
        cluster=cluster,
    )
    stack.callback(queues.close)
    return queues


def ivr_services(
    config: Config,
    prompts: PromptStore,
    media: MediaShell,
    notices: NoticeBoard,
    send_text: SendText,
    queues: LiveQueues,
    desk: CallbackDesk,
    trust: TrustCounters,
) -> IvrServices:
    recordings = Path(config.media.recordings_dir)
    recordings.mkdir(parents=True, exist_ok=True)
    return IvrServices(
        program=compile_ivr(config.ivr),
        prompts=prompts,
        media=media,
        groups_of=groups_of_function(config.ivr),
        notices_for=notices.active_for,
        send_text=send_text,
        recordings_dir=recordings,
        surge=lambda: queues.engine.surge,
        queues=queues,
        callbacks=desk,
        identify=lambda call: identify(call, config.security),
        trust=trust,
    )


async def start_sip(config: Config, ua: UserAgent, router: CallRouter, stack: AsyncExitStack) -> SipShell:
    """The SIP listeners, handing the core's events to ``router``; stopped first on the way out."""
    sip = config.sip
    shell = SipShell(
        ua, router.handle, config.security.tcp, config.security.trusts, admission=admission_for(config.security)
    )
    stack.push_async_callback(shell.stop)
    await shell.start(sip.listen, sip.port, list(sip.transports))
    if sip.port == 0 and not (config.cluster.enabled and config.cluster.advertise_sip):
        # an ephemeral port (tests): write the real one into Contact/Via
        ua.set_local_port(shell.udp_port or shell.tcp_port or 0)
    return shell


def register_collectors(
    registry: CollectorRegistry,
    ua: UserAgent,
    recorder: CallRecorder,
    ivr: IvrServices,
    queues: LiveQueues,
    desk: CallbackDesk,
) -> None:
    registry.register(SipCollector(ua, lambda: recorder.backlog, lambda: recorder.write_errors))
    # prometheus_client's own: the process's CPU, memory and descriptors, and the garbage collector's work
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(IvrCollector(ivr.metrics, ivr.media))
    cluster = queues.cluster
    if cluster is None:
        registry.register(QueueCollector(lambda: queues.engine, lambda: queues.outbound_paused, queues.counters))
    else:
        assert isinstance(registry, NodeRegistry)
        # the replica's queue families once, from the timekeeper; this node's own counts with its node label
        exporting = lambda: cluster.is_timekeeper  # noqa: E731
        registry.register_shared(QueueCollector(lambda: queues.engine, lambda: queues.outbound_paused, None, exporting))
        registry.register_shared(LostCallersCollector(cluster))
        registry.register(AgentCallCollector(queues.counters))
        registry.register(ClusterCollector(cluster))
    registry.register(CallbackCollector(desk.counters, None if cluster is None else lambda: cluster.is_timekeeper))


def start_task(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``coro`` as a task until the runtime context ends; then it is cancelled and awaited."""
    task = asyncio.create_task(coro, name=name)
    stack.push_async_callback(_cancel, task)
    return task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


# -- the runtime ---------------------------------------------------------------------------------
async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        engine = await open_storage(config, stack)
        notices = NoticeBoard.from_settings(engine, config.ivr)
        await notices.load()
        registry = NodeRegistry(config.cluster.node_id) if config.cluster.node_id else CollectorRegistry()
        outbox, send_text = start_texts(config, engine, registry, stack)
        texts = text_gate(config.security, send_text, loop.time)  # every text, whoever asks, within its cap
        send_text = texts.send
        recorder = CallRecorder(engine, config.storage.flush_interval)
        start_task(stack, recorder.run(), "call-record-writer")
        prompts = app.get(PROMPTS)
        if prompts is None:
            prompts = await asyncio.to_thread(load_prompts, config)

        wake = asyncio.Event()  # what the SIP core queued outside the shell's turn waits to be sent
        registrations: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        on_change = lambda agent, up: registrations.put_nowait((agent, up))  # noqa: E731
        on_bindings = lambda agent: registrations.put_nowait((agent, True))  # noqa: E731
        ua = UserAgent(
            ua_config(config),
            rng=random.Random(),
            # one node: a phone's first and last binding log its agent in and out; a cluster node publishes
            # every change of its bindings and the replicas apply that rule to every node's phones
            registrar=registrar_for(config, *((None, on_bindings) if config.cluster.enabled else (on_change, None))),
        )
        media = media_shell(config, MediaEventSink(loop.time, wake.set, drop=ua.drop), stack)
        queues = live_queues(config, ua, media, wake.set, stack)
        if queues.cluster is not None:
            await queues.cluster.start()  # the replica is up to date before this node takes a call
            stack.push_async_callback(queues.cluster.stop)
        start_task(stack, _registrations(registrations, queues), "registrations")
        store = callback_store(engine, config.callbacks)
        desk = CallbackDesk(store, config.callbacks, queues, ua, media, loop, send_text, wake.set, trust=texts.counters)
        stack.push_async_callback(desk.stop)
        ivr = ivr_services(config, prompts, media, notices, send_text, queues, desk, texts.counters)
        router = CallRouter(
            ua, router_settings(config), on_record=recorder.add, wall_offset=time.time() - loop.time(), ivr=ivr
        )
        shell = await start_sip(config, ua, router, stack)
        start_task(stack, _flush_when_woken(wake, shell), "sip-flush")
        dispatcher = start_task(stack, desk.run(), "callback-dispatcher")
        start_task(stack, _surge_schedule(config, queues), "surge-schedule")

        register_collectors(registry, ua, recorder, ivr, queues, desk)
        tables = TablesCollector(texts, sip_tables(ua))
        registry.register(tables)
        registry.register(TcpCollector(shell.tcp))
        if shell.admission is not None:
            registry.register(FloodCollector(shell.admission, loop.time))
        # SIGTERM (ivr/web/lifecycle.py): no new call, nor new callback; in a cluster REGISTERs go to another node
        # and a cluster's timekeeper hands its lease over at once, so that timers and callbacks go on elsewhere
        drain = Drain(ua, shell, refuse_register=config.cluster.enabled, on_start=_stop_taking_work(dispatcher, queues))
        registry.register(DrainCollector(drain))
        app[DRAIN] = drain
        app[RUNTIME] = Runtime(config, ua, router, shell, recorder, registry, outbox, notices)
        app[admin.ADMIN] = admin.AdminState(engine, notices)
        app[queueapi.QUEUES] = queues
        app[sessions.CALLBACKS] = sessions.CallbackService(
            store=store,
            settings=config.callbacks,
            dialer=desk,
            secret=secrets.token_bytes(32),
            recordings_dir=ivr.recordings_dir,
            send_text=send_text,
            registrar=ua.registrar,
            max_revoked=config.security.limits.revoked_sessions,
        )
        tables.add(session_table(app[sessions.CALLBACKS].sessions))
        yield


# -- long-lived tasks ------------------------------------------------------------------------------
async def _flush_when_woken(wake: asyncio.Event, shell: SipShell) -> None:
    """Send what the SIP core queued outside the shell's own turn, once per loop turn however often woken."""
    while True:
        await wake.wait()
        wake.clear()
        try:
            shell.pump()
        except Exception:  # one call's failure must not leave every later call unsent
            log.exception("SIP flush failed")


async def _registrations(changes: asyncio.Queue[tuple[str, bool]], queues: LiveQueues) -> None:
    """Agents' phones registering and going (told inside the SIP core) become queue events just after."""
    while True:
        agent, up = await changes.get()
        try:
            if queues.cluster is not None:
                queues.publish_bindings(agent)  # every replica applies the login rule to every node's phones
            else:
                queues.on_registration(agent, up)
        except Exception:
            log.exception("registration change of %s not applied", agent)


def _stop_taking_work(dispatcher: asyncio.Task[None], queues: LiveQueues) -> Callable[[], None]:
    """What a drain stops besides new calls: this node's callback dispatcher, and its hold on the cluster's lease."""
    resigning: list[asyncio.Task[bool]] = []  # held until done: a task nobody refers to may be collected

    def stop() -> None:
        dispatcher.cancel()
        if queues.cluster is not None:
            resigning.append(asyncio.get_running_loop().create_task(queues.cluster.resign(), name="cluster-resign"))

    return stop


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


def create_app(config: Config, prompts: PromptStore | None = None) -> web.Application:
    """The server. ``prompts`` already rendered (the CLI does it first) saves a second pass."""
    app = web.Application()
    app[CONFIG] = config
    if prompts is not None:
        app[PROMPTS] = prompts
    app.cleanup_ctx.append(_runtime_ctx)
    routes.setup_routes(app, config)
    set_server_header(app, config.http.server_header)
    return app

"""Wires the server together in one visible place: ``create_app(config)``.

The aiohttp application owns everything long-lived through one
``cleanup_ctx``: the database engine and call-record writer task, and the
SIP shell with its user agent and router. Leaving the context stops the
SIP listeners, flushes the last records and closes the engine.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import http
from .config import Config
from .metrics import SipCollector
from .records import CallRecorder, create_engine, init_schema
from .router import CallRouter, RouterSettings
from .sip.transaction import TimerValues
from .sip.transport import SipShell
from .sip.ua import UaConfig, UserAgent


@dataclass
class Runtime:
    """The live parts, reachable from handlers and tests."""

    config: Config
    ua: UserAgent
    router: CallRouter
    shell: SipShell
    recorder: CallRecorder
    registry: CollectorRegistry


CONFIG = web.AppKey("config", Config)
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


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    engine = create_engine(config.storage.url)
    await init_schema(engine)
    recorder = CallRecorder(engine, config.storage.flush_interval)
    writer = asyncio.create_task(recorder.run(), name="call-record-writer")

    loop = asyncio.get_running_loop()
    ua = UserAgent(ua_config(config), rng=random.Random())
    sip = config.sip
    router = CallRouter(
        ua,
        RouterSettings(ring_limit=sip.ring_limit, answer_delay=sip.answer_delay, hold_time=sip.hold_time),
        on_record=recorder.add,
        wall_offset=time.time() - loop.time(),
    )
    shell = SipShell(ua, router.handle)
    await shell.start(sip.listen, sip.port, list(sip.transports))
    if sip.port == 0:
        # an ephemeral port (tests): write the real one into Contact/Via
        ua.set_local_port(shell.udp_port or shell.tcp_port or 0)
    registry = CollectorRegistry()
    registry.register(SipCollector(ua, lambda: recorder.backlog, lambda: recorder.write_errors))
    app[RUNTIME] = Runtime(config, ua, router, shell, recorder, registry)
    try:
        yield
    finally:
        await shell.stop()
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        await engine.dispose()


def create_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app.cleanup_ctx.append(_runtime_ctx)
    http.setup_routes(app)
    return app

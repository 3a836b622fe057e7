"""The typed keys of the aiohttp application's state, and the live parts they hold.

Handlers read their state through these keys; keeping them apart from ``ivr/web/app.py`` lets any handler
module import them without importing the wiring (which imports every handler module).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from callback.outbox import Outbox
from ivr.calls.router import CallRouter
from ivr.media.prompts import PromptStore
from ivr.settings.config import Config
from ivr.sip.ua import UserAgent
from ivr.storage.notices import NoticeBoard
from ivr.storage.records import CallRecorder
from ivr.transport.sip import SipShell


@dataclass(frozen=True)
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

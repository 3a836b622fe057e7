"""HTTP routes: health and metrics (agent and admin APIs join later)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ivr.web import app as app_mod


async def healthz(request: web.Request) -> web.Response:
    rt = request.app[app_mod.RUNTIME]
    body = {
        "status": "ok",
        "calls_active": len(rt.ua.calls),
        "sip_udp_port": rt.shell.udp_port,
        "sip_tcp_port": rt.shell.tcp_port,
        "call_records_pending": rt.recorder.backlog,
    }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[app_mod.RUNTIME]
    data = generate_latest(rt.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)

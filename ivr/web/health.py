"""Health and metrics: ``GET /healthz`` for probes and load balancers (503 while draining), ``GET /metrics``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ivr.web.keys import RUNTIME


async def healthz(request: web.Request) -> web.Response:
    """The server is up: calls in progress, its SIP ports, call records not yet written; 503 while it drains."""
    rt = request.app[RUNTIME]
    draining = rt.ua.draining  # after SIGTERM: a load balancer should send it nothing new
    body = {
        "status": "draining" if draining else "ok",
        "calls_active": len(rt.ua.calls),
        "sip_udp_port": rt.shell.udp_port,
        "sip_tcp_port": rt.shell.tcp_port,
        "call_records_pending": rt.recorder.backlog,
    }
    return web.json_response(body, status=503 if draining else 200)


async def metrics(request: web.Request) -> web.Response:
    """Every metric of the server in Prometheus' text format."""
    rt = request.app[RUNTIME]
    data = generate_latest(rt.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


__all__ = ["healthz", "metrics"]

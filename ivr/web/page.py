"""The pages the server hands out itself: the agents' callback page and the API docs page.

Both are files in ``ivr/web/static/`` served with a strict Content-Security-Policy: scripts, styles and
data from this server only (nothing outside loopback can be reached in tests, nor should a page need it).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; media-src 'self'; "
        "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {
    "/agent/callbacks": ("callbacks.html", "text/html"),
    "/agent/callbacks.js": ("callbacks.js", "text/javascript"),
    "/agent/callbacks.css": ("callbacks.css", "text/css"),
    "/docs": ("docs.html", "text/html"),
    "/docs.js": ("docs.js", "text/javascript"),
}


async def page(request: web.Request) -> web.StreamResponse:
    """A page or its script or style sheet."""
    name, content_type = ASSETS[request.path]
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS)


__all__ = ["ASSETS", "STATIC", "page"]

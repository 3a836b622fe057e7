"""The Server header of every HTTP answer: ``http.server_header``, never aiohttp's default.

aiohttp answers with ``Server: Python/3.11 aiohttp/3.x.y`` unless told otherwise, which hands a scanner the
exact versions to look up. Our answers get the configured value as they are prepared; aiohttp's own refusals
of requests it cannot parse (a request line over 8 KiB, a bad method) are written before any of the app's
signals run, with aiohttp's default value, so that default is replaced too (one server per process).
"""

from __future__ import annotations

from aiohttp import web, web_response


def set_server_header(app: web.Application, value: str) -> None:
    """Every answer of ``app``, and aiohttp's parser-level refusals, carry ``Server: <value>``."""

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = value

    app.on_response_prepare.append(stamp)
    web_response.SERVER_SOFTWARE = value  # read by aiohttp when an answer has no Server header of its own


__all__ = ["set_server_header"]

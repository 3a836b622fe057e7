"""What the server tells a scanner about itself: the SIP Server/User-Agent and the HTTP Server header.

Both are settings (``sip.user_agent``, ``http.server_header``), both default to
``frontdesk``: the name, no version, and never aiohttp's ``Python/3.x aiohttp/3.x.y``.
A value that could smuggle a header in (a line break) is a config error.
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Callable

import pytest
from support.ports import free_port, release
from support.server import Server

from ivr.settings.config import ConfigError, parse_config
from ivr.web.app import ua_config


def http_server_header(server: Server, request: bytes | None = None, path: str = "/healthz") -> str:
    """The Server header of one answer: to GET ``path``, or to the raw bytes ``request``."""
    if request is None:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            return r.getheader("Server") or ""
        finally:
            conn.close()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    found = re.search(rb"\r\nServer: ([^\r]*)\r\n", head)
    assert re.match(rb"HTTP/1\.[01] 4", head), head[:200]
    return found[1].decode() if found else ""


def sip_options(server: Server) -> bytes:
    """The server's answer to one OPTIONS from a loopback port of ours."""
    port = free_port()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            s.settimeout(5)
            request = (
                f"OPTIONS sip:frontdesk@127.0.0.1:{server.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-server-header-1\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:scanner@127.0.0.1:{port}>;tag=scan1\r\n"
                f"To: <sip:frontdesk@127.0.0.1:{server.sip_port}>\r\n"
                "Call-ID: server-header-1@127.0.0.1\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(request.encode(), ("127.0.0.1", server.sip_port))
            return s.recv(65535)
    finally:
        release(port)


def test_the_configured_headers_are_sent(server_factory: Callable[[dict[str, object]], Server]) -> None:
    server = server_factory({"sip": {"user_agent": "edge-sip"}, "http": {"server_header": "edge-http"}})
    assert b"\r\nServer: edge-sip\r\n" in sip_options(server)
    # the same value is the User-Agent of the requests we send (tests/test_ua_outbound.py checks the header)
    assert ua_config(parse_config("sip:\n  user_agent: edge-sip\n")).user_agent == "edge-sip"
    for path in ("/healthz", "/no-such-path", "/admin/notices", "/docs"):
        assert http_server_header(server, path=path) == "edge-http", path
    # aiohttp's own refusal of a request it cannot parse, written before any route or signal
    assert http_server_header(server, b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") == "edge-http"


def test_by_default_no_header_names_a_version(server: Server) -> None:
    answer = sip_options(server)
    assert b"\r\nServer: frontdesk\r\n" in answer, answer
    for header in (http_server_header(server), http_server_header(server, b"BREW / HTTP/1.1\r\n\r\n")):
        assert header == "frontdesk", header
        assert "aiohttp" not in header.lower() and "python" not in header.lower() and not re.search(r"\d", header)


@pytest.mark.parametrize("section,key", [("sip", "user_agent"), ("http", "server_header")])
@pytest.mark.parametrize("value", ['"a\\r\\nX-Injected: 1"', '"caf\\u00e9"', '""', '"' + "x" * 101 + '"'])
def test_a_header_value_that_is_not_plain_text_is_refused(section: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"{section}:\n  {key}: {value}\n", "cfg.yaml")
    assert key in str(info.value)

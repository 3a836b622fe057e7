"""sipvicious, the scanner toll-fraud bots use, against the running server: it finds no extension and no password.

``svwar`` enumerates extensions by the answers to REGISTER: an unknown name
is challenged exactly like an agent's, so it finds none. ``svcrack`` guesses
an agent's password from a 1,000-word list that holds it (late, at word
900): after five wrong guesses the pair (name, address) is blocked and every
further answer is the 403 of a wrong password, so the right word is lost to
it. The real agent, registering from another loopback address meanwhile, is
not locked out; the HTTP doors share the count. Two controls show the tests
can fail: svwar finds the extension a stub registrar answers differently
for, and svcrack finds a password placed among its first words.

Every tool targets 127.0.0.1 only, binds ports from tests/support/ports.py,
and stops by itself (its own ``--maximumtime`` and a subprocess timeout).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ports import free_port, release
from support.server import Server, start_server

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REALM = "frontdesk"
AGENT, PASSWORD = "150", "tr0ub4dor-150"
TOOL_TIMEOUT = 90  # seconds: svcrack alone waits 10 s for late answers after its last word


def ha1(name: str, password: str) -> str:
    return hashlib.md5(f"{name}:{REALM}:{password}".encode()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("sipvicious")
    srv = start_server(tmp, {"agents": {AGENT: {"ha1": ha1(AGENT, PASSWORD)}}})
    try:
        yield srv
    finally:
        srv.stop()


def sipvicious(tool: str, *args: str) -> str:
    """Run ``sipvicious_<tool>`` bound to 127.0.0.1 on a port of ours; its whole output."""
    port = free_port()
    try:
        proc = subprocess.run(
            [str(BIN / f"sipvicious_{tool}"), "-P", str(port), "-b", "127.0.0.1", "-x", "127.0.0.1", *args],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
    finally:
        release(port)
    return proc.stdout + proc.stderr


def svcrack(target: str, words: list[str], tmp: Path) -> str:
    wordlist = tmp / f"words-{uuid.uuid4().hex[:8]}.txt"
    wordlist.write_text("\n".join(words) + "\n")
    return sipvicious("svcrack", "-u", AGENT, "-d", str(wordlist), "--maximumtime", "5", target)


def register_from(address: str, server: Server, name: str, password: str) -> int:
    """A phone at ``address`` registers ``name`` (challenge, then digest with qop=auth); the final status."""
    port = free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
        sock.settimeout(5)
        uri = f"sip:127.0.0.1:{server.sip_port}"
        call_id = uuid.uuid4().hex
        auth = ""
        for cseq in (1, 2):
            msg = (
                f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {address}:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{name}@127.0.0.1>;tag=t{port}\r\nTo: <sip:{name}@127.0.0.1>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{name}@{address}:{port}>\r\n"
                f"Expires: 60\r\n{auth}Content-Length: 0\r\n\r\n"
            )
            sock.sendto(msg.encode(), ("127.0.0.1", server.sip_port))
            while True:
                reply = sock.recv(65535).decode()
                status = int(reply.split(" ", 2)[1])
                if status >= 200:
                    break
            if status != 401:
                return status
            nonce = re.search(r'nonce="([^"]+)"', reply)
            assert nonce is not None, reply
            ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
            response = hashlib.md5(f"{ha1(name, password)}:{nonce[1]}:00000001:c0ffee:auth:{ha2}".encode()).hexdigest()
            auth = (
                f'Authorization: Digest username="{name}", realm="{REALM}", nonce="{nonce[1]}", uri="{uri}", '
                f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n'
            )
        return status
    finally:
        sock.close()
        release(port)


def agent_state_from(address: str, server: Server, name: str, password: str) -> int:
    """GET /agent/state with HTTP Basic from ``address``: the status."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5, source_address=(address, 0))
    try:
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        conn.request("GET", "/agent/state", headers={"Authorization": f"Basic {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


# -- svwar --------------------------------------------------------------------------------------------


class StubRegistrar:
    """The control: a registrar that tells names apart (401 for extension 150, 404 for the rest)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            lines = data.decode(errors="replace").split("\r\n")
            to = next((ln for ln in lines if ln.lower().startswith(("to:", "t:"))), "")
            ext = re.search(r"sip:([^@>;]*)@", to)
            status = "401 Unauthorized" if ext and ext[1] == AGENT else "404 Not Found"
            keep = [ln for ln in lines[1:] if ln.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
            extra = [f'WWW-Authenticate: Digest realm="{REALM}", nonce="abc"'] if status.startswith("401") else []
            reply = "\r\n".join([f"SIP/2.0 {status}", *keep, *extra, "Content-Length: 0", "", ""])
            self.sock.sendto(reply.encode(), peer)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        release(self.port)


def test_svwar_tells_the_stub_registrars_extension_apart() -> None:
    stub = StubRegistrar()
    try:
        out = sipvicious("svwar", "-e100-200", "-m", "REGISTER", "--maximumtime", "5", f"127.0.0.1:{stub.port}")
    finally:
        stub.stop()
    assert re.search(rf"\|\s*{AGENT}\s*\|\s*reqauth", out), out


@pytest.mark.parametrize("force", [False, True], ids=["as-is", "forced"])
def test_svwar_finds_no_extension(server: Server, force: bool) -> None:
    args = ["-e100-200", "-m", "REGISTER", "--maximumtime", "5", *(["--force"] if force else []), server.sip_target]
    out = sipvicious("svwar", *args)
    assert "reqauth" not in out and "noauth" not in out and "weird" not in out, out
    if force:  # it scanned them all and every one looked like the made-up name it tried first
        assert "found nothing" in out.lower() or "|" not in out, out
    else:
        assert "authentication request for an unknown extension" in out, out
    assert server.metric("frontdesk_register_requests_total", result="challenged") >= 1


# -- svcrack ------------------------------------------------------------------------------------------


def test_svcrack_finds_a_password_among_its_first_words(server: Server, tmp_path: Path) -> None:
    """The control: our digest speaks svcrack's, so a password within the first tries is found."""
    out = svcrack(server.sip_target, ["123456", PASSWORD, "letmein"], tmp_path)
    assert re.search(rf"\|\s*{AGENT}\s*\|\s*{re.escape(PASSWORD)}\s*\|", out), out


def test_svcrack_does_not_find_the_password_in_a_list_of_a_thousand(server: Server, tmp_path: Path) -> None:
    words = [f"guess{i:04d}" for i in range(1000)]
    words[900] = PASSWORD
    before = server.metric("frontdesk_auth_throttled_total", door="register")
    out = svcrack(server.sip_target, words, tmp_path)
    assert PASSWORD not in out and "found nothing" in out, out
    assert server.metric("frontdesk_auth_throttled_total", door="register") - before >= 900
    assert server.metric("frontdesk_auth_failures_total", door="register") >= 5
    # the guesser's address is blocked for this name on every door, the right password included ...
    assert register_from("127.0.0.1", server, AGENT, PASSWORD) == 403
    assert agent_state_from("127.0.0.1", server, AGENT, PASSWORD) == 429
    # ... while the real agent elsewhere registers, and logs in over HTTP
    assert register_from("127.0.0.2", server, AGENT, PASSWORD) == 200
    assert agent_state_from("127.0.0.2", server, AGENT, PASSWORD) == 200
    assert server.metric("frontdesk_auth_throttled_total", door="basic") >= 1
    assert 2 <= server.metric("frontdesk_bounded_map_entries", map="auth_throttle") <= 100_000

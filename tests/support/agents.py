"""Agents in live tests: the server's config for a queue and its agents, their pyVoIP phones, the HTTP API.

An agent is a pyVoIP phone (an independent SIP/RTP stack): its registration
logs the agent in and ready, and the server rings it when the queue picks
that agent. pyVoIP's quirks (see tests/test_pyvoip.py): its ACK is patched to
carry the dialog's To tag, and its non-daemon threads are stopped in
``finally`` whatever happens. Each phone's SIP port and RTP range come from
tests/support/ports.py and go back when the phone has stopped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sim.live.phones import ack_with_the_dialogs_to_tag, stop_phone
from support.demo import demo_ivr
from support.ports import free_port, port_range, release
from support.server import Server
from support.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)
    from pyVoIP.VoIP import CallState, InvalidStateError, PhoneStatus, VoIPCall, VoIPPhone

REALM = "frontdesk"
ADMIN_TOKEN = "queue-live-admin-token-0123456789"
RATE = 8000


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def password(agent: str) -> str:
    return f"secret-{agent}-pw"


def server_config(
    queue: dict[str, Any],
    agents: Iterable[str],
    *,
    surge: dict[str, Any] | None = None,
    ivr: dict[str, Any] | None = None,
) -> dict[str, object]:
    """The overrides for ``server_factory``: one queue ``general``, agents who log in by registering."""
    return {
        "sip": {"hold_time": 60, "realm": REALM},
        "agents": {a: {"ha1": md5(f"{a}:{REALM}:{password(a)}"), "skills": {}, "max_misses": 1} for a in agents},
        "queues": {"general": queue},
        # auto surge off unless a test wants it: with no agent ready the EWT is infinite, which would
        # switch surge on, and the demo's surge branch plays "lines are busy" before the menu
        "surge": surge if surge is not None else {"auto": False},
        "admin": {"token": ADMIN_TOKEN},
        "ivr": ivr if ivr is not None else demo_ivr(),
    }


# -- HTTP: agents' buttons and the admin API ------------------------------------------------------


def http(
    server: Server, method: str, path: str, *, agent: str | None = None, body: object = None
) -> tuple[int, dict[str, Any]]:
    """Basic auth as ``agent`` (SIP name and password), else the admin bearer token."""
    if agent is not None:
        cred = base64.b64encode(f"{agent}:{password(agent)}".encode()).decode()
        headers = {"Authorization": f"Basic {cred}"}
    else:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read() or b"{}"))


def agent_state(server: Server, agent: str) -> dict[str, Any]:
    status, body = http(server, "GET", "/agent/state", agent=agent)
    assert status == 200, body
    return body


def admin_agents(server: Server) -> dict[str, dict[str, Any]]:
    status, body = http(server, "GET", "/admin/agents")
    assert status == 200, body
    return {a["agent"]: a for a in body["agents"]}


def admin_queue(server: Server) -> dict[str, Any]:
    status, body = http(server, "GET", "/admin/queues")
    assert status == 200, body
    return dict(body["queues"]["general"])


# -- agents' phones ---------------------------------------------------------------------------


@dataclass
class AgentSoftphone:
    """A pyVoIP phone of one agent, with the requests the server sent it."""

    agent: str
    phone: VoIPPhone
    requests: list[tuple[float, str, str, str]] = field(default_factory=list)  # (time, method, Call-ID, From number)

    def invites(self) -> list[tuple[float, str, str, str]]:
        """The INVITEs, one per call (a retransmission is not a new ring)."""
        seen: set[str] = set()
        out = []
        for r in self.requests:
            if r[1] == "INVITE" and r[2] not in seen:
                seen.add(r[2])
                out.append(r)
        return out

    def cancels(self) -> list[tuple[float, str, str, str]]:
        return [r for r in self.requests if r[1] == "CANCEL"]


def answers_then_hangs_up(talks: list[str], talk: float) -> Callable[[VoIPCall], None]:
    """An agent who answers, notes the caller's number in ``talks``, talks ``talk`` s and hangs up first."""

    def on_call(call: VoIPCall) -> None:
        call.answer()
        talks.append(call.request.headers["From"]["number"])
        deadline = time.monotonic() + talk
        while call.state == CallState.ANSWERED and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            call.hangup()  # the agent ends the talk; the server hangs up the caller
        except InvalidStateError:
            pass  # the caller was gone first

    return on_call


def _never_answer(call: VoIPCall) -> None:
    """A phone that rings and rings: pyVoIP sent 180; nobody picks up."""


@contextmanager
def agent_phone(server: Server, agent: str, on_call: Callable[[VoIPCall], None] | None) -> Iterator[AgentSoftphone]:
    """Register ``agent``'s phone (which logs the agent in and ready); stop every pyVoIP thread at the end."""
    sip_port, rtp = free_port(), port_range(4)
    phone = VoIPPhone(
        "127.0.0.1",
        server.sip_port,
        agent,
        password(agent),
        myIP="127.0.0.1",
        sipPort=sip_port,
        rtpPortLow=rtp.start,
        rtpPortHigh=rtp[-1],
        callCallback=on_call or _never_answer,
    )
    phone.sip.register_timeout = 5  # bounds every wait for a REGISTER answer
    ack_with_the_dialogs_to_tag(phone)
    ap = AgentSoftphone(agent, phone)
    original = phone.callback  # what pyVoIP gave its SIP client as callCallback

    def spy(message: Any) -> None:
        method = getattr(message, "method", None)
        if method in ("INVITE", "CANCEL", "BYE"):
            headers = message.headers
            ap.requests.append((time.monotonic(), method, headers["Call-ID"], headers["From"]["number"]))
        original(message)

    phone.sip.callCallback = spy
    try:
        phone.start()
        assert phone.get_status() == PhoneStatus.REGISTERED
        wait_until(
            f"agent {agent} logged in by the registration", lambda: agent_state(server, agent)["state"] == "ready", 5
        )
        yield ap
    finally:
        stop_phone(phone)
        release(sip_port)
        release(rtp)


def tone_u8(freq: float, seconds: float, amplitude: int = 60) -> bytes:
    """A tone as pyVoIP's ``write_audio`` takes it: 8-bit unsigned linear PCM at 8 kHz."""
    return bytes(128 + int(amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(int(seconds * RATE)))

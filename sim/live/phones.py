"""Agents' phones for the live load path: pyVoIP (an independent SIP/RTP stack) with its 1.6.8 workarounds.

pyVoIP is imported only when a phone is made (it is the optional
``frontdesk[load]`` dependency). What pyVoIP 1.6.8 does and how it is dealt
with is written up in tests/test_pyvoip.py; the two workarounds every phone
needs live here:

- its ACK to a 200 OK carries a fresh random To tag, so it matches no dialog:
  :func:`ack_with_the_dialogs_to_tag` makes it copy the 200's tag;
- its threads are not daemons: :func:`stop_phone` stops every one of them,
  whatever state the phone is in.
"""

from __future__ import annotations

import random
import re
import socket
import warnings
from pathlib import Path
from typing import Any


def import_pyvoip() -> Any:
    """The ``pyVoIP.VoIP`` module, or ImportError with what to install."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)
            from pyVoIP import VoIP
    except ImportError as exc:
        raise ImportError("the agents' phones need pyVoIP: pip install 'frontdesk[load]'") from exc
    return VoIP


def ack_with_the_dialogs_to_tag(phone: Any) -> None:
    """Make pyVoIP's ACK carry the To tag of the 200 OK it acknowledges."""
    sip = phone.sip
    original = sip.gen_ack

    def gen_ack(response: Any) -> str:
        ack: str = original(response)
        tag = response.headers["To"]["tag"]
        return re.sub(r"^(To: [^\r\n]*?);tag=[^\r\n;]*", rf"\1;tag={tag}", ack, count=1, flags=re.M)

    sip.gen_ack = gen_ack


def stop_phone(phone: Any) -> None:
    """pyVoIP runs non-daemon threads: whatever happens, none may outlive its phone."""
    try:
        phone.stop()
    finally:
        halt_threads(phone)


def halt_threads(phone: Any) -> None:
    """Tell every loop of a phone's threads to end (SIP, registration, RTP), without waiting for the server."""
    sip = phone.sip
    sip.NSD = False
    if sip.registerThread is not None:
        sip.registerThread.cancel()
    for call in list(phone.calls.values()):
        for rtp in call.RTPClients:
            rtp.NSD = False
    phone.NSD = False


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free on ``host`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def above_ephemeral_ports() -> tuple[int, int]:
    """Ports above the kernel's ephemeral range, where no socket bound to port 0 can land meanwhile.

    An RTP range checked free now stays free: pyVoIP binds its ports only when
    a call comes, and a port the kernel handed out in between would make that
    bind fail. Falls back to 40000-60000 when the range leaves no room above.
    """
    try:
        _low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        high = 60999
    if high + 1 + 2000 <= 65535:
        return high + 1, 65535
    return 40000, 60000


def free_udp_ports(n: int, host: str = "127.0.0.1", start: int = 40000, stop: int = 60000) -> int:
    """The first of ``n`` consecutive UDP ports free on ``host`` (pyVoIP takes an RTP port range)."""
    for _ in range(200):
        base = random.randrange(start, stop - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive UDP ports free on {host}")

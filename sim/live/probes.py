"""How ``frontdesk cluster`` (sim/live/cluster.py) and its tests tell that a part answers.

Redis's ``PING``, one SIP ``OPTIONS`` over UDP, and Kamailio's view of the
nodes (``kamcmd dispatcher.list`` on its control socket), each bounded by a
short timeout and False/None rather than an exception when nothing answers.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid

from sim.live.targets import HOST


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def sip_options(port: int, user: str | None = "frontdesk", timeout: float = 1.0) -> int | None:
    """Send one OPTIONS over UDP to 127.0.0.1:``port``; the final status that came back, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        local = s.getsockname()[1]
        target = f"{user}@{HOST}:{port}" if user else f"{HOST}:{port}"
        tag, call_id = uuid.uuid4().hex[:12], uuid.uuid4().hex
        msg = (
            f"OPTIONS sip:{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:cluster@{HOST}:{local}>;tag={tag}\r\n"
            f"To: <sip:{target}>\r\n"
            f"Call-ID: {call_id}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (HOST, port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except OSError:
                return None
            parts = data.split(b" ", 2)
            if len(parts) >= 2 and parts[0] == b"SIP/2.0" and parts[1].isdigit() and int(parts[1]) >= 200:
                return int(parts[1])
    return None


def dispatcher_flags(kamcmd: str, ctl: str) -> dict[str, str]:
    """Kamailio's state of each node: ``sip:HOST:PORT`` -> flags (``AP``: in the rotation, ``IP``: out)."""
    try:
        out = subprocess.run([kamcmd, "-s", ctl, "dispatcher.list"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    flags: dict[str, str] = {}
    uri = None
    for line in out.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "URI":
            uri = value
        elif key == "FLAGS" and uri is not None:
            flags[uri], uri = value, None
    return flags

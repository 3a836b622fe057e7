"""The ``security.tcp:`` section: how much of the server one SIP-over-TCP peer, or all of them, may hold.

A TCP connection costs a file descriptor and a buffer for as long as the peer
keeps it open, and descriptors are what every new call's RTP sockets need. So
the number of connections is capped in total and per source address, a
connection must finish each message it starts (and its first one) within
``header_timeout`` and is closed after ``idle_timeout`` of silence, its
unfinished input is capped, and a peer that does not read its answers is
first no longer read from, then disconnected. Peers in
``security.trusted_networks`` are exempt from the per-source cap.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ivr.settings.base import Strict, not_shorter_than


class TcpSettings(Strict):
    max_connections: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="open SIP-over-TCP connections in all; beyond it the oldest that never sent a whole message is "
        "closed to make room, else the new one is refused",
    )
    max_connections_per_source: int = Field(
        32, ge=1, le=1_000_000, description="open connections from one IP address (trusted networks exempt)"
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="seconds within which a connection's first message, and every message once its first byte "
        "arrived, must be complete (slowloris)",
    )
    idle_timeout: float = Field(
        3900.0,
        gt=0,
        le=86400,
        description="seconds without a byte from the peer (keep-alive CRLFs count) before the connection is closed; "
        "the default outlasts registrar.max_expires, so a phone registered over TCP stays reachable between "
        "its refreshes without keep-alives",
    )
    max_buffered: int = Field(
        131072,
        ge=1024,
        le=64 * 1024 * 1024,
        description="bytes of unfinished input held for one connection before it is closed",
    )
    write_high_water: int = Field(
        65536,
        ge=1024,
        le=64 * 1024 * 1024,
        description="bytes of unsent output at which the server stops reading from a connection until the peer "
        "reads; four times this closes it",
    )

    _idle_not_shorter = field_validator("idle_timeout")(not_shorter_than("header_timeout"))

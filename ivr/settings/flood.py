"""The ``security.flood:`` settings: per-source SIP rate limits, block period and overload admission.

Read by :class:`ivr.sip.admission.Admission`, which the UDP receive path asks
about every datagram before it is parsed. Sources in
``security.trusted_networks`` are never blocked nor capped per source.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ivr.settings.base import Strict


class FloodSettings(Strict):
    enabled: bool = Field(True, description="check every UDP datagram's source and first line before parsing")
    requests_per_second: int = Field(
        400, ge=1, description="datagrams (requests and responses) one source may send per second before it is blocked"
    )
    new_calls_per_second: int = Field(
        100, ge=1, description="new INVITEs (no To tag) one source may send per second; more are refused"
    )
    new_calls_per_network: int = Field(
        200,
        ge=0,
        description="new INVITEs per second from one IPv4 /24 or IPv6 /48; more are refused; 0: no cap",
    )
    block_seconds: float = Field(
        60.0, gt=0, le=86400, description="how long a source over requests_per_second is ignored"
    )
    max_new_calls_per_second: int = Field(
        400,
        ge=0,
        description="new INVITEs admitted per second from all sources together (0: no cap); in-dialog requests "
        "are served first",
    )
    over_limit: Literal["reply", "drop"] = Field(
        "reply", description="a new INVITE over a cap: reply 503 with Retry-After, or drop it silently"
    )
    retry_after: int = Field(5, ge=0, le=3600, description="seconds in the Retry-After of that 503")
    max_sources: int = Field(
        65536, ge=16, description="sources counted per second; beyond it new sources share one overflow count"
    )
    max_blocked: int = Field(65536, ge=16, description="sources held in the block list at once")

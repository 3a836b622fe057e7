"""The ``security:`` section: what the edge trusts and how it defends itself (docs/security.md).

``trusted_networks`` names the peers whose word the server takes: SIP trunks
and the load balancer in front of the nodes. Their requests are never
throttled or blocked, media may be sent to the address their SDP names before
their RTP has arrived from it, and the caller number they assert is believed.
Everyone else is served too, but within the edge's limits.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal

from pydantic import Field, IPvAnyNetwork

from ivr.settings.auth import AuthSettings
from ivr.settings.base import Strict
from ivr.settings.callerid import CallerIdSettings
from ivr.settings.flood import FloodSettings
from ivr.settings.limits import LimitSettings
from ivr.settings.tcp import TcpSettings

_VERDICTS_MAX = 4096  # addresses whose trust is remembered


class SecuritySettings(Strict):
    trusted_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="networks of trusted peers (trunks, the load balancer), e.g. 192.0.2.0/24 or 198.51.100.7/32",
    )
    tcp: TcpSettings = Field(default_factory=TcpSettings, description="limits of SIP over TCP")
    flood: FloodSettings = Field(
        default_factory=FloodSettings, description="per-source SIP rate limits and overload admission (UDP)"
    )
    caller_id: CallerIdSettings = Field(
        default_factory=CallerIdSettings, description="whose caller number is believed; texts per number"
    )
    limits: LimitSettings = Field(default_factory=LimitSettings, description="caps of the tables keyed by remote input")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="throttling of wrong passwords at every door")
    log_numbers: Literal["masked", "clear"] = Field(
        "masked", description="customers' numbers and text bodies in the log: masked (last 3 digits) or clear"
    )

    @cached_property
    def _networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(str(n)) for n in self.trusted_networks)

    @cached_property
    def _verdicts(self) -> dict[str, bool]:
        return {}

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (an IP literal; anything else is not trusted) lies in a trusted network.

        Asked for every call and datagram: verdicts are remembered, in a table emptied when it reaches
        ``_VERDICTS_MAX`` addresses so that spoofed sources cannot grow it.
        """
        verdicts = self._verdicts
        verdict = verdicts.get(address)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                verdict = False
            else:
                verdict = any(ip in net for net in self._networks)
            if len(verdicts) >= _VERDICTS_MAX:
                verdicts.clear()
            verdicts[address] = verdict
        return verdict

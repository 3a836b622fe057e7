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

from pydantic import Field, IPvAnyNetwork

from ivr.settings.base import Strict


class SecuritySettings(Strict):
    trusted_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="networks of trusted peers (trunks, the load balancer), e.g. 192.0.2.0/24 or 198.51.100.7/32",
    )

    @cached_property
    def _networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(str(n)) for n in self.trusted_networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (an IP literal; anything else is not trusted) lies in a trusted network."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

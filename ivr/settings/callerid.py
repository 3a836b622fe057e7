"""The ``security.caller_id:`` section: whose caller number is believed, and how many texts one number may get.

A caller number in ``From`` (or ``P-Asserted-Identity``) is only a claim: any
peer can write any number there. The server believes it only from peers in
``security.trusted_networks`` (the trunks and the load balancer), and then
prefers ``P-Asserted-Identity`` when it is there. A caller from anywhere else
is served the whole IVR under the number they claim, but no text goes to that
number and reaching an agent closes no callback booked for it
(``ivr/calls/trust.py``). A number the caller keys in for a callback booking
was given, not claimed: the booking stands and its texts (the promise warning,
the expiry notice) may go to it, within the per-number cap below, which holds
for every text to every number whoever asked for it.
"""

from __future__ import annotations

from pydantic import Field

from ivr.settings.base import Strict


class CallerIdSettings(Strict):
    use_asserted_identity: bool = Field(
        True, description="take the number from P-Asserted-Identity (from a trusted peer) when present, else From"
    )
    require_asserted_identity: bool = Field(
        False,
        description="from a trusted peer, believe only a P-Asserted-Identity, never From: for a proxy in front "
        "(the cluster's Kamailio) that relays every caller but asserts only its trunks' numbers",
    )
    texts_per_number: int = Field(
        5, ge=0, le=10_000, description="text messages one number may be sent within text_window; 0 sends none"
    )
    text_window: float = Field(3600.0, gt=0, le=7 * 86400, description="seconds the per-number text cap spans")

"""The ``security.limits:`` section: the most entries each table keyed by remote input may hold.

Every map whose keys a peer chooses (a number to text, a session token to
revoke, a SIP transaction's branch) is capped, so no flood of distinct keys
grows the server's memory without bound; what happens at the cap is said for
each field. Their sizes are the gauge ``frontdesk_bounded_map_entries{map}``,
their caps ``frontdesk_bounded_map_limit{map}``, and what the caps turned away
``frontdesk_bounded_map_refused_total{map}`` (``ivr/web/mapmetrics.py``).
"""

from __future__ import annotations

from pydantic import Field

from ivr.settings.base import Strict


class LimitSettings(Strict):
    text_numbers: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="numbers the per-number text cap remembers within its window; when full, texts to numbers "
        "not yet remembered are refused until old ones age out",
    )
    revoked_sessions: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="logged-out session tokens remembered until they expire; beyond it the one closest to its "
        "end is forgotten and every token of that agent ending no later is refused instead",
    )
    sip_transactions: int = Field(
        200_000,
        ge=100,
        le=10_000_000,
        description="SIP server transactions held at once (each lives up to 32 s); beyond it new requests are "
        "dropped unanswered, copies of held ones are still answered",
    )

"""The ``security.auth:`` section: how failed logins are throttled on every door.

One count covers REGISTER digest, HTTP Basic and the callbacks page's login
(``ivr/sip/throttle.py``), so switching doors gains a guesser nothing. A
source that has not failed is never refused: an attacker guessing an
agent's name from one address cannot lock the real agent out from another.
Sources in ``security.trusted_networks`` are not throttled.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ivr.settings.base import Strict


class AuthSettings(Strict):
    per_source: int = Field(
        20, ge=1, le=100_000, description="wrong passwords from one address (any names) before it is blocked"
    )
    per_name: int = Field(
        5, ge=1, le=100_000, description="wrong passwords for one name from one address before that pair is blocked"
    )
    name_under_attack: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description="wrong passwords for one name from all addresses within the window; beyond it every further "
        "address gets one try at that name before it is blocked",
    )
    window: float = Field(600.0, gt=0, le=86_400, description="seconds within which wrong passwords add up")
    block: float = Field(60.0, gt=0, le=86_400, description="the first block, in seconds; each next one doubles")
    max_block: float = Field(3600.0, gt=0, le=604_800, description="the longest block, in seconds")
    max_entries: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="addresses, names and pairs remembered at most; beyond it the longest idle is forgotten",
    )

    @model_validator(mode="after")
    def _block_within_max(self) -> AuthSettings:
        if self.block > self.max_block:
            raise ValueError("block must not exceed max_block")
        return self

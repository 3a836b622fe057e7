"""A wall clock the tests step by hand: stores and dispatchers take ``now`` from it."""

from __future__ import annotations

from datetime import datetime, timedelta


class SteppedClock:
    """Callable like ``utcnow``; ``advance(seconds)`` moves it on."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

"""The shared 20 ms media clock's arithmetic, pure: when each tick is due and what a late one owes.

Every call's audio is paced from one tick scheduled at absolute times
``t0 + k * 20 ms`` (docs/ivr.md), so pacing does not drift with the time a
tick takes. The RTP shell (ivr/transport/rtp.py) arms ``loop.call_at`` at
:attr:`Pacer.due` and calls :meth:`Pacer.tick` with the loop's time; the
answer says how many frames each stream sends now and how many to skip:

- on time, or late by less than a period: one frame;
- late by whole periods: those frames are owed too, but at most
  ``MAX_CATCH_UP`` go out at once (a burst would make the next tick late as
  well); the rest are skipped, a gap in RTP time rather than a drift;
- the next tick is the first grid point still in the future.

Media timeouts are checked on every ``timeout_every``-th tick (once a
second): a scan of every stream, kept off the 20 ms path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ivr.media.g711 import FRAME_SECONDS
from ivr.media.stream import MediaStream

MAX_CATCH_UP = 2  # frames a late tick may send per stream: more would make the next tick late too
TIMEOUT_EVERY = 50  # ticks between media timeout checks: once a second


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick owes every stream."""

    frames: int  # packets each stream sends now (1, up to MAX_CATCH_UP after a late tick)
    skipped: int  # frames too late to send: RTP time jumps over them
    late: float  # seconds after the grid point this tick was due at
    check_timeouts: bool  # this tick also looks for streams whose RTP stopped


class Pacer:
    """The tick grid ``t0 + k * period``: started with the first stream, asked at every tick."""

    __slots__ = ("_k", "_t0", "max_catch_up", "period", "ticks", "timeout_every")

    def __init__(
        self, period: float = FRAME_SECONDS, max_catch_up: int = MAX_CATCH_UP, timeout_every: int = TIMEOUT_EVERY
    ) -> None:
        self.period = period
        self.max_catch_up = max_catch_up
        self.timeout_every = timeout_every
        self.ticks = 0
        self._t0 = 0.0
        self._k = 0

    def start(self, now: float) -> float:
        """A new grid from ``now`` (the first stream opened); returns when the first tick is due."""
        self._t0 = now
        self._k = 1
        return self.due

    @property
    def due(self) -> float:
        """When the next tick is due."""
        return self._t0 + self._k * self.period

    def tick(self, now: float) -> Tick:
        """The tick due at :attr:`due` runs at ``now``; :attr:`due` moves on to the next grid point."""
        late = max(0.0, now - self.due)
        self.ticks += 1
        # frames owed: this one plus any whole periods the tick slept through;
        # the next tick is the first one still in the future
        owed = 1 + int(late / self.period)
        self._k += owed
        skipped = max(0, owed - self.max_catch_up)
        return Tick(owed - skipped, skipped, late, self.ticks % self.timeout_every == 0)


def silent_streams(streams: Iterable[MediaStream], now: float, timeout: float) -> list[MediaStream]:
    """The streams that received nothing for more than ``timeout`` seconds (none when ``timeout`` is 0)."""
    if timeout <= 0:
        return []
    limit = now - timeout
    return [s for s in streams if s.last_rx < limit]

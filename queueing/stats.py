"""What the engine counts and shows: a queue's counters, and the snapshots read by metrics, API and simulator.

The counters carry the live metric definitions (docs/queueing.md): the
``/metrics`` collector and the simulator's reports read these very numbers.
They only ever grow; a window is the difference of two readings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class QueueStats:
    """Counters of one queue, with the live metric definitions (docs/queueing.md)."""

    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    abandoned_short: int = 0  # abandons within the grace period (left out of service level)
    overflowed: dict[str, int] = field(default_factory=dict)
    answered_within_t: int = 0
    answer_wait_total: float = 0.0
    longest_wait: float = 0.0  # longest time any caller spent in line before leaving it
    ewt_samples: int = 0
    ewt_error_total: float = 0.0  # sum of (actual - predicted) waits of answered callers
    ewt_abs_error_total: float = 0.0
    ring_no_answer: int = 0

    def record_answer(self, wait: float, within: bool, predicted: float) -> None:
        """A caller was answered after ``wait`` seconds (``within`` T); ``predicted`` was their EWT on arrival."""
        self.answered += 1
        self.answer_wait_total += wait
        self.longest_wait = max(self.longest_wait, wait)
        self.answered_within_t += within
        if math.isfinite(predicted):
            self.ewt_samples += 1
            self.ewt_error_total += wait - predicted
            self.ewt_abs_error_total += abs(wait - predicted)

    def record_abandon(self, wait: float, grace: float) -> bool:
        """A caller hung up after ``wait`` seconds in line; True when within ``grace`` (left out of service level)."""
        self.abandoned += 1
        self.longest_wait = max(self.longest_wait, wait)
        short = wait < grace
        if short:
            self.abandoned_short += 1
        return short

    def record_overflow(self, target: str, wait: float) -> None:
        self.overflowed[target] = self.overflowed.get(target, 0) + 1
        self.longest_wait = max(self.longest_wait, wait)

    @property
    def overflowed_total(self) -> int:
        return sum(self.overflowed.values())

    @property
    def asa(self) -> float:
        """Average speed of answer: mean wait of answered callers (0 before the first answer)."""
        return self.answer_wait_total / self.answered if self.answered else 0.0

    @property
    def service_level(self) -> float:
        """answered within T / (answered + abandoned + overflowed - abandoned within grace); 1.0 when empty."""
        decided = self.answered + self.abandoned + self.overflowed_total - self.abandoned_short
        return self.answered_within_t / decided if decided else 1.0

    @property
    def abandonment_rate(self) -> float:
        return self.abandoned / self.offered if self.offered else 0.0

    @property
    def ewt_error_mean(self) -> float:
        """Mean of (actual - predicted) wait; positive means callers waited longer than told."""
        return self.ewt_error_total / self.ewt_samples if self.ewt_samples else 0.0

    @property
    def ewt_abs_error_mean(self) -> float:
        return self.ewt_abs_error_total / self.ewt_samples if self.ewt_samples else 0.0


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    name: str
    waiting: int
    ringing: int
    longest_waiting: float  # of callers in line now
    ewt: float  # for a caller joining now
    aht: float
    serving: int
    idle: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    surge: bool
    queues: Mapping[str, QueueSnapshot]
    agents_by_state: Mapping[str, int]

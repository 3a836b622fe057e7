"""Estimated wait time (EWT): the published formula (docs/queueing.md).

    EWT(k) = max(0, k - idle) * AHT / N

k     the caller's 1-based position in the queue (a new caller: waiting + 1)
idle  agents of the queue that are ready right now (they take a caller at once)
N     agents serving the queue: logged in and not "not ready" (ready, ringing,
      talking, wrap-up) with the queue's skills
AHT   average handle time (talk + wrap-up), an exponentially weighted moving
      average: AHT <- alpha * handle_time + (1 - alpha) * AHT

With N agents busy and exponential handle times, one frees up every AHT / N
seconds on average, so the k-th caller waits about k of those gaps. With no
agent serving (N = 0) the wait is unbounded: EWT is ``math.inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class MovingAht:
    """Exponentially weighted moving average of handle times."""

    value: float
    alpha: float

    def add(self, handle_time: float) -> None:
        self.value = self.alpha * handle_time + (1.0 - self.alpha) * self.value


def ewt(position: int, serving: int, idle: int, aht: float) -> float:
    """Estimated wait for the caller at 1-based ``position`` (see module docstring)."""
    if position < 1:
        raise ValueError("position is 1-based")
    ahead = max(0, position - idle)
    if ahead == 0:
        return 0.0
    if serving <= 0:
        return math.inf
    return ahead * aht / serving

"""The engine's own timers: at most one per (kind, id), the earliest found without scanning.

Re-arming a (kind, id) replaces its time; the old heap entry stays behind and
is dropped when it reaches the top (a lazy delete), so arming costs
O(log n) and a caller who leaves costs nothing more.
"""

from __future__ import annotations

import heapq
import itertools


class Timers:
    def __init__(self) -> None:
        self._due: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    def arm(self, kind: str, ident: str, at: float) -> None:
        self._due[(kind, ident)] = at
        heapq.heappush(self._heap, (at, next(self._seq), kind, ident))

    def disarm(self, kind: str, ident: str) -> None:
        self._due.pop((kind, ident), None)

    def armed(self, kind: str, ident: str) -> bool:
        return (kind, ident) in self._due

    def next(self) -> float | None:
        """Time of the earliest armed timer, or None."""
        heap = self._heap
        while heap:
            at, _, kind, ident = heap[0]
            if self._due.get((kind, ident)) == at:
                return at
            heapq.heappop(heap)
        return None

    def pop(self) -> tuple[str, str]:
        """Take the earliest armed timer off (call right after ``next()`` returned its time)."""
        _, _, kind, ident = heapq.heappop(self._heap)
        del self._due[(kind, ident)]
        return kind, ident

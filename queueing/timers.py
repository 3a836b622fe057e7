"""The engine's own timers: at most one per (kind, id), the earliest found without scanning.

Re-arming a (kind, id) replaces its time; the old heap entry stays behind and
is dropped when it reaches the top (a lazy delete), so arming costs
O(log n) and a caller who leaves costs nothing more. Entries left behind by
timers far in the future would never reach the top, so once they outnumber
the armed timers the heap is rebuilt from the live ones (amortized O(1) per
arm; the heap stays at most about twice the armed timers).
"""

from __future__ import annotations

import heapq
import itertools


class Timers:
    def __init__(self) -> None:
        self._due: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []  # (at, seq, (kind, id))
        self._seq = itertools.count()

    def arm(self, kind: str, ident: str, at: float) -> None:
        due = self._due
        key = (kind, ident)
        due[key] = at
        heap = self._heap
        heapq.heappush(heap, (at, next(self._seq), key))
        if len(heap) > 2 * len(due) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop the stale entries (disarmed or re-armed timers), keeping the live ones' order."""
        due = self._due
        live: dict[tuple[str, str], tuple[float, int, tuple[str, str]]] = {}
        for entry in self._heap:
            key = entry[2]
            if due.get(key) == entry[0] and (key not in live or entry[1] < live[key][1]):
                live[key] = entry  # of two entries for the same time, the earlier one fires (the other is stale)
        heap = list(live.values())
        heapq.heapify(heap)
        self._heap = heap

    def disarm(self, kind: str, ident: str) -> None:
        self._due.pop((kind, ident), None)

    def armed(self, kind: str, ident: str) -> bool:
        return (kind, ident) in self._due

    def next(self) -> float | None:
        """Time of the earliest armed timer, or None."""
        heap = self._heap
        due = self._due
        while heap:
            entry = heap[0]
            if due.get(entry[2]) == entry[0]:
                return entry[0]
            heapq.heappop(heap)
        return None

    def pop(self) -> tuple[str, str]:
        """Take the earliest armed timer off (call right after ``next()`` returned its time)."""
        key = heapq.heappop(self._heap)[2]
        del self._due[key]
        return key

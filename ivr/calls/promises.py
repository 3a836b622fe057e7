"""What the callback desk promises a caller: a slot's bounds and the forecast of when an agent is free.

The promise of a booking (R10, R14) and the check of promises at risk both
read the live queue engine's snapshot through the EWT formula
(``queueing/ewt.py``, docs/queueing.md): the wait of one more caller behind
everyone in line, every phone ringing and every callback already due.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from callback.store import Callback
from ivr.calls.queues import LiveQueues
from queueing.ewt import ewt

if TYPE_CHECKING:
    from ivr.settings.callbacks import CallbackSettings

NEVER = timedelta(days=365)  # "no agent serves the queue" as a start, for the store's at-risk query


class Forecast:
    """Slots and waits for one server's callbacks; the due callbacks are those of the dispatcher's last pass."""

    def __init__(self, queues: LiveQueues, settings: CallbackSettings) -> None:
        self.queues = queues
        self.settings = settings
        self.due_waiting: dict[str, int] = {}  # queue -> due callbacks at the last dispatcher pass

    def note_due(self, due: Iterable[Callback]) -> None:
        """The callbacks due now (the dispatcher's pass): each one is ahead of a new booking."""
        counts: dict[str, int] = {}
        for cb in due:
            counts[cb.queue] = counts.get(cb.queue, 0) + 1
        self.due_waiting = counts

    def slot_bounds(self, slot: str, now: datetime) -> tuple[datetime, datetime | None]:
        """Start and end of a slot: now for "asap", else the window's next occurrence (server local time)."""
        if slot == "asap":
            return now, None
        for window in self.settings.windows:
            if window.name == slot:
                local = now.astimezone()
                day = local.replace(hour=0, minute=0, second=0, microsecond=0)
                start = day + timedelta(minutes=window.start)
                end = day + timedelta(minutes=window.end)
                if local >= end:
                    start, end = start + timedelta(days=1), end + timedelta(days=1)
                return max(start, local).astimezone(UTC), end.astimezone(UTC)
        raise ValueError(f"no callback window {slot!r}")

    def wait(self, queue: str, extra_ahead: int = 0) -> float:
        """Seconds until an agent of ``queue`` is free for one more callback, by the EWT formula."""
        snap = self.queues.engine.snapshot().queues.get(queue)
        if snap is None:
            return math.inf
        ahead = snap.waiting + snap.ringing + self.due_waiting.get(queue, 0) + extra_ahead
        return ewt(ahead + 1, snap.serving, snap.idle, snap.aht)

    def promise(self, queue: str, slot: str, now: datetime) -> tuple[datetime, datetime | None, datetime]:
        """(not before, window end, promised by) for a booking made ``now``."""
        start, end = self.slot_bounds(slot, now)
        wait = self.wait(queue)
        if not math.isfinite(wait):
            wait = float(self.settings.max_age)  # nobody serves: promise no more than the list keeps it
        promised = max(start, now + timedelta(seconds=wait)) + timedelta(seconds=self.settings.promise_margin)
        if end is not None:
            promised = max(promised, end)  # a window slot: promised by its end
        return start, end, promised

    def start(self, cb: Callback, position: int, now: datetime) -> datetime | None:
        """When a waiting callback ``position``-th in its queue's list may start; None when nobody serves it."""
        wait = self.wait(cb.queue, extra_ahead=position - self.due_waiting.get(cb.queue, 0))
        if not math.isfinite(wait):
            return None
        return max(now + timedelta(seconds=wait), cb.not_before)


__all__ = ["NEVER", "Forecast"]

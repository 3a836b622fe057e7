"""The surge switch: who wants surge mode on (ops, a schedule, the automatic thresholds) and the hysteresis.

Theory of operation
-------------------
Three sources ask for surge mode, in this order of precedence: a manual
override (ops; ``None`` when released), a schedule (the model's own windows
or an external ``schedule`` switch event), and the automatic thresholds of
``SurgeSpec``. The automatic one turns on when ANY ``*_on`` threshold is
crossed and off only when EVERY ``*_off`` level is back, and never changes
again before ``min_dwell`` seconds have passed. The service-level threshold
reads a sliding window of the callers who left the line (answered within T or
not). The engine measures the pressure (EWT, line length) and carries out the
result; this module only keeps the state and applies the rules, with the
times it is given.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from queueing.events import SurgeCause
from queueing.model import SurgeSpec
from queueing.pickling import reduce_state

_EPS = 1e-9


class SurgeControl:
    def __init__(self, spec: SurgeSpec) -> None:
        self.spec = spec
        self.on = False
        self.changes: dict[str, int] = {"manual": 0, "schedule": 0, "auto": 0}
        self.manual: bool | None = None
        self.scheduled_external = False
        self.scheduled_window = False
        self.auto = False
        self.auto_changed_at = -math.inf
        self._window: deque[tuple[float, bool]] = deque()  # (left the line at, answered within T)
        self._within = 0  # how many in the window were answered within T (kept, not counted per event)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_state(self, self.spec)

    def record(self, at: float, within: bool) -> None:
        """A caller left the line at ``at``: answered within T, or not (late, abandoned, overflowed)."""
        self._window.append((at, within))
        self._within += within
        self._trim(at)  # the window holds the spec's last service_level_window seconds, auto or not

    def _trim(self, now: float) -> None:
        window = self._window
        start = now - self.spec.service_level_window
        while window and window[0][0] < start:
            self._within -= window.popleft()[1]

    def in_window(self, t: float) -> bool:
        """Whether ``t`` is inside one of the model's scheduled surge windows [start, end)."""
        return any(s <= t < e for s, e in self.spec.schedule)

    def switch(self, on: bool | None, cause: SurgeCause, now: float) -> None:
        """A ``SurgeSwitch`` event: ops, an external schedule, or a forced automatic state."""
        if cause == "manual":
            self.manual = on
        elif cause == "schedule":
            self.scheduled_external = bool(on)
        else:
            self.auto = bool(on)
            self.auto_changed_at = now

    def dwell_end(self, now: float) -> float | None:
        """While the automatic switch may not change yet: when it may; else None."""
        if now - self.auto_changed_at < self.spec.min_dwell - _EPS:
            return self.auto_changed_at + self.spec.min_dwell
        return None

    def observe(self, now: float, ewt_now: float, length: int) -> None:
        """Apply the automatic thresholds to the longest EWT and line length across queues now (after the dwell)."""
        spec = self.spec
        window = self._window
        self._trim(now)
        level: float | None = None
        if len(window) >= spec.service_level_min_samples:
            level = self._within / len(window)

        def above(value: float, threshold: float | None) -> bool:
            return threshold is not None and value >= threshold

        def at_or_below(value: float, threshold: float | None, fallback: float | None) -> bool:
            t = threshold if threshold is not None else fallback
            return t is None or value <= t

        if not self.auto:
            turn_on = (
                above(ewt_now, spec.ewt_on)
                or above(length, spec.queue_length_on)
                or (level is not None and spec.service_level_on is not None and level < spec.service_level_on)
            )
            if turn_on:
                self.auto, self.auto_changed_at = True, now
        else:
            sl_off = spec.service_level_off if spec.service_level_off is not None else spec.service_level_on
            turn_off = (
                at_or_below(ewt_now, spec.ewt_off, spec.ewt_on)
                and at_or_below(length, spec.queue_length_off, spec.queue_length_on)
                and (level is None or sl_off is None or level >= sl_off)
            )
            if turn_off:
                self.auto, self.auto_changed_at = False, now

    def wanted(self) -> tuple[bool, SurgeCause]:
        """What the sources ask for now, by precedence: manual, then schedule, then automatic."""
        if self.manual is not None:
            return self.manual, "manual"
        if self.scheduled_window or self.scheduled_external:
            return True, "schedule"
        return self.auto, "auto"

    def flip(self, on: bool, cause: SurgeCause) -> None:
        self.on = on
        self.changes[cause] += 1

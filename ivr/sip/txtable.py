"""The user agent's transaction table and its one timer heap, pure.

Every transaction's next deadline and every named call timer ("linger",
"cancel", the router's own) sit on one heap of ``(at, seq, owner, name)``.
An entry is never removed when a timer is re-armed or cancelled: it is
skipped when it comes up stale (its owner no longer holds that time), which
keeps re-arming at O(log n) and cancelling at O(1).

A stale entry still holds its owner until it comes up, so a call's timer
far ahead (the hold timer, an hour away) would keep every ended call, its
INVITE, SDP and dialog, alive until then: gigabytes at a surge's call rate,
and all of it walked by the garbage collector. So a call's timer more than
``FAR`` seconds ahead does not go on the heap: it waits in a dict keyed by
(call, name), from which the call's end or a re-arm removes it at O(1), and
a sweep every ``FAR`` seconds moves the ones due within ``2 * FAR`` onto the
heap. What stays stale on the heap is then at most ``2 * FAR`` seconds of
re-armed timers and resends, and a sweep walks only the live calls' far
timers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from ivr.sip.dialogs import InboundCall, OutCall
from ivr.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Transaction,
    TxKey,
)

ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
TimerOwner = Transaction | InboundCall | OutCall

FAR = 64.0  # seconds: a call's timer further ahead than this waits off the heap (transactions' are all nearer)


class TransactionTable:
    """Server and client transactions by key, and the heap their timers and the calls' timers share."""

    def __init__(self) -> None:
        self.server: dict[TxKey, ServerTransaction] = {}
        self.client: dict[TxKey, ClientTransaction] = {}
        self.invite_owner: dict[TxKey, OutCall] = {}  # client INVITE transactions of the calls we place
        self._heap: list[tuple[float, int, TimerOwner, str]] = []
        self._seq = 0
        self._far: dict[tuple[InboundCall | OutCall, str], float] = {}  # call timers more than FAR ahead, off the heap
        self._horizon = 0.0  # when the far timers are swept next (while there are any)
        self.now = 0.0  # the latest time the user agent was given: a call's timer beyond now + FAR is far

    @property
    def active(self) -> int:
        return len(self.server) + len(self.client)

    # -- transactions -----------------------------------------------------------
    def add_client(self, tx: ClientTransaction, owner: OutCall | None = None) -> None:
        self.client[tx.key] = tx
        if owner is not None:
            self.invite_owner[tx.key] = owner

    def schedule(self, tx: Transaction) -> None:
        """Put the transaction's next deadline on the heap; forget it once it has terminated."""
        if tx.terminated:
            self.forget(tx)
            return
        d = tx.deadline
        if d != tx.scheduled:
            tx.scheduled = d
            if d != float("inf"):
                self.push(d, tx, "")

    def forget(self, tx: Transaction) -> None:
        key = tx.key
        if isinstance(tx, (ServerInviteTransaction, ServerNonInviteTransaction)):
            if self.server.get(key) is tx:
                del self.server[key]
        elif self.client.get(key) is tx:
            del self.client[key]
            self.invite_owner.pop(key, None)

    def kill(self, tx: Transaction) -> None:
        """Abandon a transaction (no more resends or timeouts)."""
        tx._terminate()
        self.forget(tx)

    # -- the timer heap -------------------------------------------------------------
    def push(self, at: float, owner: TimerOwner, name: str) -> None:
        """Arm a timer: ``name`` "" is the transaction's own deadline, else a call's named timer."""
        if name and at > self.now + FAR:
            assert isinstance(owner, (InboundCall, OutCall))
            if not self._far:
                self._horizon = self.now + FAR
            self._far[(owner, name)] = at
            return
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, owner, name))

    def arm(self, call: InboundCall | OutCall, name: str, at: float) -> None:
        call.timers[name] = at
        if self._far:
            self._far.pop((call, name), None)  # re-armed: the far entry is no longer its time
        self.push(at, call, name)

    def disarm(self, call: InboundCall | OutCall, name: str) -> None:
        """Cancel one of a call's timers."""
        call.timers.pop(name, None)
        if self._far:
            self._far.pop((call, name), None)

    def disarm_all(self, call: InboundCall | OutCall) -> None:
        """Cancel every timer of a call (it ended): nothing here holds it any longer than its heap entries."""
        far = self._far
        if far:
            for name in call.timers:
                far.pop((call, name), None)
        call.timers.clear()

    @property
    def entries(self) -> int:
        """Timer entries held: on the heap (stale ones included) and waiting off it."""
        return len(self._heap) + len(self._far)

    def _sweep(self, now: float) -> None:
        """Move the far timers due within 2 * FAR onto the heap: the rest are not due before the next sweep."""
        self._horizon = now + FAR
        far = self._far
        window = now + 2 * FAR
        near = [(key, at) for key, at in far.items() if at <= window]
        for key, at in near:
            del far[key]
            call, name = key
            if call.timers.get(name) == at:
                self._seq += 1
                heapq.heappush(self._heap, (at, self._seq, call, name))

    def next_at(self) -> float | None:
        """When the earliest live timer is due (stale entries on top are dropped), or the next sweep is."""
        heap = self._heap
        while heap:
            at, _, owner, name = heap[0]
            if _live(at, owner, name):
                return at if not self._far or at < self._horizon else self._horizon
            heapq.heappop(heap)
        return self._horizon if self._far else None

    def due(self, now: float) -> Iterator[tuple[TimerOwner, str]]:
        """The live timers due by ``now``, earliest first; a call's named timer is disarmed as it is handed out.

        A generator: what the caller does with one timer (arming another) is seen by the next.
        """
        self.now = now
        if self._far and now >= self._horizon:
            self._sweep(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, owner, name = heapq.heappop(heap)
            if not _live(at, owner, name):
                continue
            if name:
                assert isinstance(owner, (InboundCall, OutCall))
                del owner.timers[name]
            yield owner, name


def _live(at: float, owner: TimerOwner, name: str) -> bool:
    if name:
        if isinstance(owner, OutCall):
            return owner.timers.get(name) == at  # "linger" runs on after the call ended
        assert isinstance(owner, InboundCall)
        return owner.timers.get(name) == at and not owner.ended
    assert isinstance(owner, Transaction)
    return owner.scheduled == at and not owner.terminated

"""The user agent's transaction table and its one timer heap, pure.

Every transaction's next deadline and every named call timer ("linger",
"cancel", the router's own) sit on one heap of ``(at, seq, owner, name)``.
An entry is never removed when a timer is re-armed or cancelled: it is
skipped when it comes up stale (its owner no longer holds that time), which
keeps re-arming at O(log n) and cancelling at O(1).

A stale entry still holds its owner, and a call's hold timer is an hour
away: left alone, every ended call (its INVITE, its SDP, its dialog) would
stay alive until then, which at a surge's call rate is gigabytes, and the
garbage collector walks all of it. So the heap is compacted, stale entries
dropped in one pass, whenever it has grown to twice its live size at the
last compaction (plus ``COMPACT_SLACK``): each pass costs O(live) and comes
after at least that many pushes, O(1) a push.
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

COMPACT_SLACK = 4096  # stale entries a small heap may hold before its first compaction


class TransactionTable:
    """Server and client transactions by key, and the heap their timers and the calls' timers share."""

    def __init__(self) -> None:
        self.server: dict[TxKey, ServerTransaction] = {}
        self.client: dict[TxKey, ClientTransaction] = {}
        self.invite_owner: dict[TxKey, OutCall] = {}  # client INVITE transactions of the calls we place
        self._heap: list[tuple[float, int, TimerOwner, str]] = []
        self._seq = 0
        self._compact_at = COMPACT_SLACK
        self.compactions = 0  # passes that dropped the heap's stale entries

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
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (at, self._seq, owner, name))
        if len(heap) > self._compact_at:
            self.compact()

    @property
    def heap_size(self) -> int:
        """Entries on the timer heap, stale ones included."""
        return len(self._heap)

    def compact(self) -> None:
        """Drop the stale entries (and with them the ended calls and transactions they hold)."""
        heap = self._heap
        live = [entry for entry in heap if _live(entry[0], entry[2], entry[3])]
        heapq.heapify(live)
        heap[:] = live  # in place: a ``due`` generator being iterated holds this same list
        self._compact_at = 2 * len(live) + COMPACT_SLACK
        self.compactions += 1

    def arm(self, call: InboundCall | OutCall, name: str, at: float) -> None:
        call.timers[name] = at
        self.push(at, call, name)

    def next_at(self) -> float | None:
        """When the earliest live timer is due (stale entries on top are dropped)."""
        heap = self._heap
        while heap:
            at, _, owner, name = heap[0]
            if _live(at, owner, name):
                return at
            heapq.heappop(heap)
        return None

    def due(self, now: float) -> Iterator[tuple[TimerOwner, str]]:
        """The live timers due by ``now``, earliest first; a call's named timer is disarmed as it is handed out.

        A generator: what the caller does with one timer (arming another) is seen by the next.
        """
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

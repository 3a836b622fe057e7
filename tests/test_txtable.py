"""The transaction table's one timer heap: stale entries are skipped, and compacted away in bounded time."""

from __future__ import annotations

from ivr.sip.transaction import ServerNonInviteTransaction, TimerValues
from ivr.sip.txtable import COMPACT_SLACK, TransactionTable

PEER = ("udp", "127.0.0.1", 5070)
TV = TimerValues()


def completed(table: TransactionTable, n: int, now: float) -> ServerNonInviteTransaction:
    """A server transaction answered at ``now``: its Timer J is due at ``now + 32``."""
    tx = ServerNonInviteTransaction((f"z9hG4bK-{n}", "127.0.0.1:5070", "BYE"), PEER, False, TV)
    tx.send_response(b"SIP/2.0 200 OK\r\n\r\n", 200, now)
    table.server[tx.key] = tx
    table.schedule(tx)
    return tx


def test_stale_entries_are_compacted_and_the_heap_stays_within_twice_its_live_size() -> None:
    table = TransactionTable()
    kept = [completed(table, n, 0.0) for n in range(1000)]
    for n in range(1000, 20_000):
        table.kill(completed(table, n, 0.0))  # abandoned at once: its entry goes stale
        live = len(kept)
        assert table.heap_size <= 2 * (live + 1) + COMPACT_SLACK  # + 1: the one just pushed
    assert table.compactions >= 4
    table.compact()
    assert table.heap_size == len(kept)  # only the live deadlines are left
    assert table.next_at() == 32.0


def test_a_compaction_while_due_timers_are_handed_out_fires_each_one_once() -> None:
    """``due`` is a generator: a timer armed by a handler, due already, comes out of the same pass."""
    table = TransactionTable()
    first = [completed(table, n, float(n % 7)) for n in range(3000)]
    for n in range(3000, 6000):
        table.kill(completed(table, n, 0.0))
    armed: list[ServerNonInviteTransaction] = []
    fired: list[object] = []
    compactions = table.compactions
    for owner, _ in table.due(100.0):
        fired.append(owner)
        assert isinstance(owner, ServerNonInviteTransaction)
        owner.fire(100.0)
        table.schedule(owner)
        if len(fired) <= len(first):
            armed.append(completed(table, 20_000 + len(fired), 68.0))  # its Timer J is due at 100 already
            for m in range(5):  # later timers: they push the heap over its limit meanwhile
                completed(table, 10_000 + 5 * len(fired) + m, 90.0)
    assert table.compactions > compactions  # it did compact in the middle of the iteration
    assert len(fired) == len(first) + len(armed)
    assert {id(t) for t in fired} == {id(t) for t in first + armed}
    assert table.next_at() == 122.0  # the later ones, at 90 + 32

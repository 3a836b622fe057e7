"""RFC 3261 section 17 transactions (with RFC 6026's Accepted state) on a stepped virtual clock.

The clock advances by TICK, a power of two, so every timer instant is exact
in floating point and the tests can assert exact retransmission times.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.sip.transaction import (
    INF,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timeout,
    TimerValues,
    Transaction,
    TxState,
)

TICK = 1 / 64
TV = TimerValues(t1=0.5, t2=4.0, t4=5.0)
UDP = ("udp", "192.0.2.1", 5070)
TCP = ("tcp", "192.0.2.1", 5070)

# Retransmission instants for a message first sent at 0 with T1=0.5, T2=4:
# intervals 0.5, 1, 2, 4, 4, 4, ... (capped at T2)
CAPPED = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
# Timer A: intervals 0.5, 1, 2, 4, 8, 16 (never capped)
DOUBLING = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]


class TxStepper:
    """Steps a transaction along: ``now += TICK`` and fire whatever is due."""

    def __init__(self, tx: Transaction, now: float = 0.0) -> None:
        self.tx = tx
        self.now = now
        self.sent: list[tuple[float, bytes]] = []
        self.timeouts: list[tuple[float, Timeout]] = []
        self.ended_at: float | None = None

    def run_until(self, until: float) -> None:
        """Fire what is due at ``now``, then step; stops on the first tick >= ``until``."""
        tx = self.tx
        while not tx.terminated:
            if tx.deadline <= self.now:
                # a stepped clock never runs past a deadline by a whole tick
                assert self.now - tx.deadline < TICK
                send, timeout = tx.fire(self.now)
                if send is not None:
                    self.sent.append((self.now, send))
                if timeout is not None:
                    self.timeouts.append((self.now, timeout))
                if tx.terminated:
                    self.ended_at = self.now
                continue
            if self.now >= until:
                break
            self.now += TICK

    @property
    def send_times(self) -> list[float]:
        return [t for t, _ in self.sent]


def server_invite(peer: tuple[str, str, int] = UDP) -> ServerInviteTransaction:
    return ServerInviteTransaction(("z9hG4bKs1", "192.0.2.1:5070", "INVITE"), peer, peer[0] != "udp", TV)


def server_non_invite(peer: tuple[str, str, int] = UDP) -> ServerNonInviteTransaction:
    return ServerNonInviteTransaction(("z9hG4bKs2", "192.0.2.1:5070", "BYE"), peer, peer[0] != "udp", TV)


def client_invite(peer: tuple[str, str, int] = UDP) -> ClientInviteTransaction:
    return ClientInviteTransaction(("z9hG4bKc1", "INVITE"), peer, peer[0] != "udp", TV, b"INVITE")


def client_non_invite(peer: tuple[str, str, int] = UDP) -> ClientNonInviteTransaction:
    return ClientNonInviteTransaction(("z9hG4bKc2", "BYE"), peer, peer[0] != "udp", TV, b"BYE")


# ---------------------------------------------------------------------------
# server INVITE


def test_server_invite_starts_proceeding_without_timers() -> None:
    tx = server_invite()
    assert tx.state is TxState.PROCEEDING
    assert tx.deadline == INF
    # a copy before any response is absorbed
    assert tx.receive_request(0.1) is None
    assert tx.send_response(b"100", 100, 0.0) == b"100"
    assert tx.send_response(b"180", 180, 0.0) == b"180"
    assert tx.state is TxState.PROCEEDING
    assert tx.deadline == INF
    assert tx.receive_request(0.2) == b"180"


def test_server_invite_2xx_retransmitted_until_64_t1_without_ack() -> None:
    tx = server_invite()
    assert tx.send_response(b"200", 200, 0.0) == b"200"
    assert tx.state is TxState.ACCEPTED
    assert tx.deadline == 0.5
    clock = TxStepper(tx)
    clock.run_until(100.0)
    assert clock.send_times == CAPPED
    assert all(data == b"200" for _, data in clock.sent)
    assert clock.timeouts == [(32.0, Timeout.NO_ACK)]
    assert clock.ended_at == 32.0
    assert tx.state is TxState.TERMINATED
    assert tx.deadline == INF


def test_server_invite_2xx_retransmission_stops_at_ack() -> None:
    tx = server_invite()
    tx.send_response(b"200", 200, 0.0)
    clock = TxStepper(tx)
    clock.run_until(2.0)
    assert clock.send_times == [0.5, 1.5]
    assert tx.receive_ack(2.0) is True
    assert tx.state is TxState.ACCEPTED
    # Timer L still runs: it absorbs INVITE copies (answered with the 2xx)
    assert tx.deadline == 32.0
    assert tx.receive_ack(2.5) is False  # a copy of the ACK
    assert tx.receive_request(3.0) == b"200"
    clock.run_until(100.0)
    assert clock.send_times == [0.5, 1.5]
    assert clock.timeouts == []
    assert clock.ended_at == 32.0


def test_server_invite_2xx_may_be_resent_by_the_tu_and_later_finals_are_refused() -> None:
    tx = server_invite()
    tx.send_response(b"200", 200, 0.0)
    assert tx.send_response(b"200", 200, 0.25) == b"200"
    assert tx.send_response(b"486", 486, 0.25) is None
    assert tx.send_response(b"180", 180, 0.25) is None


def test_server_invite_2xx_interval_is_capped_at_t2() -> None:
    tv = TimerValues(t1=0.5, t2=1.0, t4=5.0)
    tx = ServerInviteTransaction(("b", "h", "INVITE"), UDP, False, tv)
    tx.send_response(b"200", 200, 0.0)
    clock = TxStepper(tx)
    clock.run_until(5.0)
    assert clock.send_times == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_server_invite_non_2xx_timer_g_then_ack_confirms_then_timer_i() -> None:
    tx = server_invite()
    tx.send_response(b"100", 100, 0.0)
    assert tx.send_response(b"486", 486, 1.0) == b"486"
    assert tx.state is TxState.COMPLETED
    assert tx.deadline == 1.5
    clock = TxStepper(tx, now=1.0)
    clock.run_until(5.0)
    assert clock.send_times == [1.5, 2.5, 4.5]
    assert all(data == b"486" for _, data in clock.sent)
    # a copy of the INVITE gets the final response again
    assert tx.receive_request(5.0) == b"486"
    assert tx.receive_ack(5.0) is True
    assert tx.state is TxState.CONFIRMED
    assert tx.deadline == 10.0  # Timer I = T4
    # ACK copies are absorbed in CONFIRMED
    assert tx.receive_ack(6.0) is False
    assert tx.receive_request(6.0) is None
    clock.run_until(100.0)
    assert clock.send_times == [1.5, 2.5, 4.5]
    assert clock.timeouts == []
    assert clock.ended_at == 10.0


def test_server_invite_non_2xx_timer_g_schedule_and_timer_h() -> None:
    tx = server_invite()
    tx.send_response(b"603", 603, 0.0)
    clock = TxStepper(tx)
    clock.run_until(100.0)
    assert clock.send_times == CAPPED
    assert clock.timeouts == [(32.0, Timeout.NO_ACK)]
    assert clock.ended_at == 32.0
    assert tx.receive_ack(40.0) is False


def test_server_invite_reliable_2xx_has_no_retransmissions() -> None:
    tx = server_invite(TCP)
    tx.send_response(b"200", 200, 0.0)
    assert tx.deadline == 32.0
    clock = TxStepper(tx)
    clock.run_until(100.0)
    assert clock.sent == []
    assert clock.timeouts == [(32.0, Timeout.NO_ACK)]


def test_server_invite_reliable_non_2xx_ack_terminates_at_once() -> None:
    tx = server_invite(TCP)
    tx.send_response(b"486", 486, 0.0)
    assert tx.deadline == 32.0  # Timer H only, no Timer G
    clock = TxStepper(tx)
    clock.run_until(3.0)
    assert clock.sent == []
    assert tx.receive_ack(3.0) is True
    assert tx.deadline == 3.0  # Timer I = 0 on a reliable transport
    clock.run_until(100.0)
    assert clock.ended_at == 3.0
    assert clock.timeouts == []


def test_server_invite_reliable_non_2xx_timer_h() -> None:
    tx = server_invite(TCP)
    tx.send_response(b"486", 486, 0.0)
    clock = TxStepper(tx)
    clock.run_until(100.0)
    assert clock.sent == []
    assert clock.timeouts == [(32.0, Timeout.NO_ACK)]


def test_server_invite_request_copies_get_the_last_response() -> None:
    tx = server_invite()
    tx.send_response(b"100 Trying", 100, 0.0)
    assert tx.receive_request(0.1) == b"100 Trying"
    tx.send_response(b"180 Ringing", 180, 0.2)
    assert tx.receive_request(0.3) == b"180 Ringing"
    tx.send_response(b"200 OK", 200, 0.4)
    assert tx.receive_request(0.5) == b"200 OK"


@settings(max_examples=50)
@given(
    t1=st.integers(1, 64).map(lambda n: n / 64),
    t2_factor=st.integers(1, 16),
    ack_at=st.none() | st.integers(1, 64 * 70).map(lambda n: n / 64),
    status=st.sampled_from([200, 202, 486, 603]),
)
def test_server_invite_retransmission_law(t1: float, t2_factor: int, ack_at: float | None, status: int) -> None:
    """Intervals are T1, 2T1, 4T1 .. capped at T2; nothing is sent after the ACK; 64*T1 ends it."""
    tv = TimerValues(t1=t1, t2=t1 * t2_factor, t4=5.0)
    tx = ServerInviteTransaction(("b", "h", "INVITE"), UDP, False, tv)
    tx.send_response(b"final", status, 0.0)
    clock = TxStepper(tx)
    acked = False
    if ack_at is not None and ack_at < 64 * t1:
        clock.run_until(ack_at)
        acked = tx.receive_ack(clock.now)
        assert acked is True
    clock.run_until(64 * t1 + 10.0)
    # ack_at is a multiple of TICK: the ACK arrives on that very tick, after its timers
    ack_time = ack_at if acked and ack_at is not None else INF
    expected: list[float] = []
    at, interval = 0.0, t1
    while True:
        at += interval
        interval = min(2 * interval, tv.t2)
        if at >= 64 * t1 or at > ack_time:
            break
        expected.append(at)
    assert clock.send_times == expected
    if acked and status >= 300:
        assert clock.timeouts == []
        assert clock.ended_at == ack_time + tv.t4  # Timer I
    elif acked:
        assert clock.timeouts == []
        assert clock.ended_at == 64 * t1  # Timer L
    else:
        assert clock.timeouts == [(64 * t1, Timeout.NO_ACK)]
        assert clock.ended_at == 64 * t1


# ---------------------------------------------------------------------------
# server non-INVITE


def test_server_non_invite_timer_j_on_udp() -> None:
    tx = server_non_invite()
    assert tx.state is TxState.TRYING
    assert tx.receive_request(0.0) is None  # absorbed until the TU answers
    assert tx.send_response(b"100", 100, 0.0) == b"100"
    assert tx.state is TxState.PROCEEDING
    assert tx.receive_request(0.1) == b"100"
    assert tx.send_response(b"200", 200, 1.0) == b"200"
    assert tx.state is TxState.COMPLETED
    assert tx.deadline == 33.0  # Timer J = 64*T1
    assert tx.receive_request(2.0) == b"200"
    assert tx.send_response(b"500", 500, 2.0) is None
    clock = TxStepper(tx, now=1.0)
    clock.run_until(100.0)
    # the final response is never retransmitted by a non-INVITE server transaction
    assert clock.sent == []
    assert clock.timeouts == []
    assert clock.ended_at == 33.0


def test_server_non_invite_timer_j_is_zero_on_tcp() -> None:
    tx = server_non_invite(TCP)
    tx.send_response(b"200", 200, 1.0)
    assert tx.deadline == 1.0
    clock = TxStepper(tx, now=1.0)
    clock.run_until(5.0)
    assert clock.ended_at == 1.0


# ---------------------------------------------------------------------------
# client non-INVITE


def test_client_non_invite_timer_e_doubles_to_t2_then_timer_f() -> None:
    tx = client_non_invite()
    assert tx.start(0.0) == b"BYE"
    assert tx.state is TxState.TRYING
    assert tx.deadline == 0.5
    clock = TxStepper(tx)
    clock.run_until(100.0)
    assert clock.send_times == CAPPED
    assert all(data == b"BYE" for _, data in clock.sent)
    assert clock.timeouts == [(32.0, Timeout.NO_RESPONSE)]
    assert clock.ended_at == 32.0


def test_client_non_invite_timer_e_is_t2_in_proceeding() -> None:
    tx = client_non_invite()
    tx.start(0.0)
    clock = TxStepper(tx)
    clock.run_until(1.0)
    assert clock.send_times == [0.5]
    assert tx.receive_response(100, 1.0) is True
    assert tx.state is TxState.PROCEEDING
    clock.run_until(100.0)
    # the E already armed fires at 1.5, then every T2; Timer F still runs
    assert clock.send_times == [0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert clock.timeouts == [(32.0, Timeout.NO_RESPONSE)]


def test_client_non_invite_final_response_then_timer_k() -> None:
    tx = client_non_invite()
    tx.start(0.0)
    clock = TxStepper(tx)
    clock.run_until(2.0)
    assert clock.send_times == [0.5, 1.5]
    assert tx.receive_response(200, 2.0) is True
    assert tx.state is TxState.COMPLETED
    assert tx.deadline == 7.0  # Timer K = T4
    assert tx.receive_response(200, 3.0) is False  # copies are absorbed
    clock.run_until(100.0)
    assert clock.send_times == [0.5, 1.5]
    assert clock.timeouts == []
    assert clock.ended_at == 7.0


def test_client_non_invite_reliable() -> None:
    tx = client_non_invite(TCP)
    tx.start(0.0)
    assert tx.deadline == 32.0  # F only
    clock = TxStepper(tx)
    clock.run_until(1.0)
    assert tx.receive_response(200, 1.0) is True
    assert tx.deadline == 1.0  # K = 0
    clock.run_until(100.0)
    assert clock.sent == []
    assert clock.ended_at == 1.0


# ---------------------------------------------------------------------------
# client INVITE


def test_client_invite_timer_a_doubles_and_timer_b_times_out() -> None:
    tx = client_invite()
    assert tx.start(0.0) == b"INVITE"
    assert tx.state is TxState.CALLING
    clock = TxStepper(tx)
    clock.run_until(100.0)
    assert clock.send_times == DOUBLING
    assert clock.timeouts == [(32.0, Timeout.NO_RESPONSE)]
    assert clock.ended_at == 32.0


def test_client_invite_provisional_stops_retransmissions() -> None:
    tx = client_invite()
    tx.start(0.0)
    clock = TxStepper(tx)
    clock.run_until(2.0)
    assert tx.receive_response(180, 2.0) == (True, None)
    assert tx.state is TxState.PROCEEDING
    assert tx.deadline == INF
    clock.run_until(100.0)
    assert clock.send_times == [0.5, 1.5]
    assert not tx.terminated
    assert tx.receive_response(200, 100.0) == (True, None)
    assert tx.terminated


def test_client_invite_non_2xx_acks_and_timer_d() -> None:
    tx = client_invite()
    tx.start(0.0)
    clock = TxStepper(tx)
    clock.run_until(1.0)
    assert tx.receive_response(100, 1.0) == (True, None)
    assert tx.receive_response(486, 2.0, ack=b"ACK") == (True, b"ACK")
    assert tx.state is TxState.COMPLETED
    assert tx.deadline == 34.0  # Timer D = 32 s on UDP
    # each copy of the final response is answered with the same ACK, not passed up
    assert tx.receive_response(486, 3.0) == (False, b"ACK")
    assert tx.receive_response(486, 20.0) == (False, b"ACK")
    clock.run_until(100.0)
    assert clock.send_times == [0.5]
    assert clock.timeouts == []
    assert clock.ended_at == 34.0


def test_client_invite_2xx_terminates_at_once() -> None:
    tx = client_invite()
    tx.start(0.0)
    assert tx.receive_response(200, 0.25) == (True, None)
    assert tx.terminated
    assert tx.deadline == INF


def test_client_invite_reliable() -> None:
    tx = client_invite(TCP)
    tx.start(0.0)
    assert tx.deadline == 32.0  # B only
    clock = TxStepper(tx)
    clock.run_until(1.0)
    assert tx.receive_response(404, 1.0, ack=b"ACK") == (True, b"ACK")
    assert tx.deadline == 1.0  # D = 0
    clock.run_until(100.0)
    assert clock.sent == []
    assert clock.ended_at == 1.0

"""SIP transactions (RFC 3261 section 17, RFC 6026), sans-IO.

Theory of operation
-------------------
A transaction is a small state machine that owns the retransmission and
timeout timers of one request/response exchange. It never reads a clock
and never touches a socket: every method takes ``now`` and returns the bytes
to (re)send, and ``deadline`` says when :meth:`fire` must be called next.
The user agent keeps all transactions on one timer heap.

Server INVITE (17.2.1 with RFC 6026's Accepted state)::

    PROCEEDING --1xx--> PROCEEDING
    PROCEEDING --2xx--> ACCEPTED   (2xx resent at T1, 2T1 .. T2 until ACK; Timer L = 64*T1)
    PROCEEDING --3xx-6xx--> COMPLETED (resent by Timer G on UDP; Timer H = 64*T1 waits for ACK)
    COMPLETED --ACK--> CONFIRMED   (Timer I = T4 on UDP, 0 on TCP, absorbs ACK copies)
    ACCEPTED --ACK--> ACCEPTED      (retransmission stops; Timer L still absorbs INVITE copies)
    any --timer end--> TERMINATED

Server non-INVITE (17.2.2)::

    TRYING --1xx--> PROCEEDING --final--> COMPLETED --Timer J (64*T1 UDP, 0 TCP)--> TERMINATED

Client INVITE (17.1.1)::

    CALLING (Timer A resend, Timer B = 64*T1) --1xx--> PROCEEDING
    CALLING/PROCEEDING --2xx--> TERMINATED (the dialog ACKs 2xx)
    CALLING/PROCEEDING --3xx-6xx--> COMPLETED (ACK sent; Timer D = 32 s UDP, 0 TCP)

Client non-INVITE (17.1.2)::

    TRYING (Timer E resend, Timer F = 64*T1) --1xx--> PROCEEDING (E at T2)
    --final--> COMPLETED (Timer K = T4 UDP, 0 TCP) --> TERMINATED

A request copy arriving at a server transaction is answered with the last
response sent (or absorbed when none has been sent yet).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

INF = float("inf")

Peer = tuple[str, str, int]  # (transport "udp"/"tcp", host, port)
TxKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TimerValues:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class TxState(enum.Enum):
    TRYING = "trying"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Timeout(enum.Enum):
    """Why a transaction gave up; returned by :meth:`fire`."""

    NO_ACK = "no_ack"  # Timer H (non-2xx) or L (2xx): the ACK never came
    NO_RESPONSE = "no_response"  # Timer B or F: the peer never answered


class Transaction:
    """Common timer book-keeping. ``deadline`` is the next time to fire."""

    __slots__ = ("_timers", "deadline", "key", "peer", "reliable", "scheduled", "state", "tv")

    def __init__(self, key: TxKey, peer: Peer, reliable: bool, tv: TimerValues) -> None:
        self.key = key
        self.peer = peer
        self.reliable = reliable
        self.tv = tv
        self.state = TxState.TRYING
        self._timers: dict[str, float] = {}
        self.deadline = INF
        self.scheduled = INF  # deadline last put on the user agent's heap

    def _set(self, name: str, at: float) -> None:
        self._timers[name] = at
        self.deadline = min(self._timers.values())

    def _clear(self, *names: str) -> None:
        for name in names:
            self._timers.pop(name, None)
        self.deadline = min(self._timers.values()) if self._timers else INF

    def _due(self, now: float) -> list[str]:
        due = [name for name, at in self._timers.items() if at <= now]
        due.sort(key=self._timers.__getitem__)
        return due

    def fire(self, now: float) -> tuple[bytes | None, Timeout | None]:
        """Run the timers due at ``now``: bytes to resend, and why it gave up (if it did)."""
        raise NotImplementedError

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED

    def _terminate(self) -> None:
        self.state = TxState.TERMINATED
        self._timers.clear()
        self.deadline = INF


class ServerInviteTransaction(Transaction):
    __slots__ = ("acked", "interval", "last_response", "last_status", "owner", "to_tag")

    def __init__(self, key: TxKey, peer: Peer, reliable: bool, tv: TimerValues) -> None:
        super().__init__(key, peer, reliable, tv)
        self.state = TxState.PROCEEDING
        self.acked = False
        # the dialog/call this INVITE belongs to; let go when the call ends, so that a finished
        # call waiting out Timer L or H holds no more than this transaction (less for the collector to walk)
        self.owner: object = None
        self.to_tag = ""  # the To tag of our responses: a CANCEL's 200 carries it after the call let go
        self.last_response: bytes | None = None
        self.last_status = 0
        self.interval = tv.t1

    def send_response(self, data: bytes, status: int, now: float) -> bytes | None:
        """Record a response the TU sends; returns the bytes to transmit."""
        st = self.state
        if st is TxState.PROCEEDING:
            self.last_response = data
            self.last_status = status
            if status < 200:
                return data
            tv = self.tv
            if status < 300:
                self.state = TxState.ACCEPTED
                self._set("L", now + 64 * tv.t1)
            else:
                self.state = TxState.COMPLETED
                self._set("H", now + 64 * tv.t1)
            if not self.reliable:
                self.interval = tv.t1
                self._set("G", now + tv.t1)
            return data
        if st is TxState.ACCEPTED and 200 <= status < 300:
            return data  # the TU may resend its 2xx (RFC 6026 8.7)
        return None

    def receive_request(self, now: float) -> bytes | None:
        """A copy of the INVITE arrived: resend the last response."""
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED, TxState.ACCEPTED):
            return self.last_response
        return None

    def receive_ack(self, now: float) -> bool:
        """ACK for our response. Returns True the first time it confirms it."""
        if self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self._clear("G", "H")
            self._set("I", now + (0.0 if self.reliable else self.tv.t4))
            return True
        if self.state is TxState.ACCEPTED and not self.acked:
            self.acked = True
            self._clear("G")
            return True
        return False

    def fire(self, now: float) -> tuple[bytes | None, Timeout | None]:
        send: bytes | None = None
        for name in self._due(now):
            if name == "G":
                send = self.last_response
                tv = self.tv
                # 2xx backs off to T2 (13.3.1.4); non-2xx per Timer G, same law
                self.interval = min(2 * self.interval, tv.t2)
                self._set("G", now + self.interval)
            elif name == "H":
                self._terminate()
                return None, Timeout.NO_ACK
            elif name == "L":
                self._terminate()
                return None, None if self.acked else Timeout.NO_ACK
            elif name == "I":
                self._terminate()
        return send, None


class ServerNonInviteTransaction(Transaction):
    __slots__ = ("last_response",)

    def __init__(self, key: TxKey, peer: Peer, reliable: bool, tv: TimerValues) -> None:
        super().__init__(key, peer, reliable, tv)
        self.state = TxState.TRYING
        self.last_response: bytes | None = None

    def send_response(self, data: bytes, status: int, now: float) -> bytes | None:
        if self.state in (TxState.TRYING, TxState.PROCEEDING):
            self.last_response = data
            if status < 200:
                self.state = TxState.PROCEEDING
            else:
                self.state = TxState.COMPLETED
                self._set("J", now + (0.0 if self.reliable else 64 * self.tv.t1))
            return data
        return None

    def receive_request(self, now: float) -> bytes | None:
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED):
            return self.last_response
        return None  # TRYING: absorbed, the TU has not answered yet

    def fire(self, now: float) -> tuple[bytes | None, Timeout | None]:
        if "J" in self._due(now):
            self._terminate()
        return None, None


class ClientInviteTransaction(Transaction):
    __slots__ = ("ack", "interval", "request")

    def __init__(self, key: TxKey, peer: Peer, reliable: bool, tv: TimerValues, request: bytes) -> None:
        super().__init__(key, peer, reliable, tv)
        self.request = request
        self.interval = tv.t1
        self.ack: bytes | None = None

    def start(self, now: float) -> bytes:
        self.state = TxState.CALLING
        if not self.reliable:
            self._set("A", now + self.interval)
        self._set("B", now + 64 * self.tv.t1)
        return self.request

    def receive_response(self, status: int, now: float, ack: bytes | None = None) -> tuple[bool, bytes | None]:
        """Returns (pass the response to the TU, bytes to send).

        ``ack`` is the ACK the TU built for a non-2xx final response; it is
        sent now and again for each copy of that response.
        """
        st = self.state
        if st in (TxState.CALLING, TxState.PROCEEDING):
            if status < 200:
                self.state = TxState.PROCEEDING
                self._clear("A", "B")
                return True, None
            if status < 300:
                self._terminate()
                return True, None
            self.state = TxState.COMPLETED
            self.ack = ack
            self._clear("A", "B")
            self._set("D", now + (0.0 if self.reliable else 32.0))
            return True, ack
        if st is TxState.COMPLETED and status >= 300:
            return False, self.ack
        return False, None

    def fire(self, now: float) -> tuple[bytes | None, Timeout | None]:
        send: bytes | None = None
        for name in self._due(now):
            if name == "A":
                send = self.request
                self.interval *= 2
                self._set("A", now + self.interval)
            elif name == "B":
                self._terminate()
                return None, Timeout.NO_RESPONSE
            elif name == "D":
                self._terminate()
        return send, None


class ClientNonInviteTransaction(Transaction):
    __slots__ = ("interval", "request")

    def __init__(self, key: TxKey, peer: Peer, reliable: bool, tv: TimerValues, request: bytes) -> None:
        super().__init__(key, peer, reliable, tv)
        self.request = request
        self.interval = tv.t1

    def start(self, now: float) -> bytes:
        self.state = TxState.TRYING
        if not self.reliable:
            self._set("E", now + self.interval)
        self._set("F", now + 64 * self.tv.t1)
        return self.request

    def receive_response(self, status: int, now: float) -> bool:
        """Returns True when the response is to be passed to the TU."""
        st = self.state
        if st in (TxState.TRYING, TxState.PROCEEDING):
            if status < 200:
                self.state = TxState.PROCEEDING
                return True
            self.state = TxState.COMPLETED
            self._clear("E", "F")
            self._set("K", now + (0.0 if self.reliable else self.tv.t4))
            return True
        return False

    def fire(self, now: float) -> tuple[bytes | None, Timeout | None]:
        send: bytes | None = None
        for name in self._due(now):
            if name == "E":
                send = self.request
                tv = self.tv
                if self.state is TxState.PROCEEDING:
                    self.interval = tv.t2
                else:
                    self.interval = min(2 * self.interval, tv.t2)
                self._set("E", now + self.interval)
            elif name == "F":
                self._terminate()
                return None, Timeout.NO_RESPONSE
            elif name == "K":
                self._terminate()
        return send, None

"""The fuzz benchmark's driver and its command, ``frontdesk bench-fuzz``.

Mutated datagrams (ivr/fuzz/mutate.py) go through the real :class:`UserAgent` with the real
:class:`CallRouter` answering calls (ring, answer, hang up after a hold time), on a virtual clock whose
timers fire as the shell would fire them: so dialogs and transactions are created, retransmitted, timed out
and ended. Callers come one after another, each with a few in-dialog requests, and earlier callers keep
sending now and then, so many calls overlap. Our own requests (BYE, REFER, UPDATE) are answered by the
phone, sometimes with a mutated response.

The parser contract says only ``SipParseError`` leaves parsing, and the user agent turns it into a 400 or a
drop: so any exception out of ``receive``, ``handle_timer`` or the router is an escape. Escapes are counted
by kind (exception type and the line that raised) with the first datagram that caused each. After the last
datagram the clock runs past every timer; then nothing may be left: no transaction, call, dialog, pending
REFER, lingering call, binding or timer.

``main`` times the run with the wall clock (datagrams per second); :func:`run` itself reads no clock.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from ivr.calls.router import CallRouter, RouterSettings
from ivr.fuzz.mutate import AGENT, PASSWORD, REALM, Dialog, mutate, response_to
from ivr.sip.message import Request, SipParseError, parse_message
from ivr.sip.registrar import Credential, Registrar, RegistrarSettings, ha1
from ivr.sip.ua import UaConfig, UserAgent
from ivr.storage.records import CallSummary

DRAIN = 4000.0  # virtual seconds past the last datagram: beyond 64*T1, Timer K, and a registration's max_expires
NONCE_REFRESH = 200.0  # a new nonce before the registrar's 300 s lifetime runs out
STEPS = (0.0, 0.0, 0.01, 0.1, 0.3, 0.6, 1.5)  # virtual time between one caller's datagrams
KINDS = ("ack", "bye", "cancel", "info", "options", "register", "reinvite", "invite", "ack_non_2xx")
_NONCE_RE = re.compile(r'nonce="([^"]+)"')


@dataclass
class FuzzReport:
    """What a run fed and what came out of it."""

    seed: int
    mutated: int = 0  # mutated datagrams delivered
    intact: int = 0  # valid datagrams delivered between them
    calls: int = 0  # IncomingCall events (calls the router answered or refused)
    records: int = 0  # calls that ended and were recorded
    answered_400: int = 0
    dropped: int = 0
    escapes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # kind -> the first datagram that raised it (repr)
    tracebacks: dict[str, str] = field(default_factory=dict)  # kind -> its first traceback
    leftover: dict[str, int] = field(default_factory=dict)  # state still held once the timers have run
    virtual_seconds: float = 0.0
    seconds: float = 0.0  # wall time, filled in by main

    @property
    def ok(self) -> bool:
        return not self.escapes and not any(self.leftover.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "mutated": self.mutated,
            "intact": self.intact,
            "calls": self.calls,
            "records": self.records,
            "answered_400": self.answered_400,
            "dropped": self.dropped,
            "escaped": sum(self.escapes.values()),
            "escapes": dict(self.escapes),
            "leftover": self.leftover,
            "virtual_seconds": round(self.virtual_seconds, 1),
            "seconds": round(self.seconds, 2),
            "datagrams_per_second": round((self.mutated + self.intact) / self.seconds) if self.seconds else None,
            "ok": self.ok,
        }


def _kind(exc: BaseException) -> str:
    """``ValueError at ivr/sip/sdp.py:92``: the exception type and the project line that raised it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/ivr/" in f.filename]
    where = ""
    if frames:
        f = frames[-1]
        where = f" at {f.filename[f.filename.rindex('/ivr/') + 1 :]}:{f.lineno}"
    sent = " (in a request we sent)" if any("user agent sent" in n for n in getattr(exc, "__notes__", ())) else ""
    return f"{type(exc).__name__}{where}{sent}"


class FuzzDriver:
    """The user agent, the router and a virtual clock; callers' datagrams in, escapes counted."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        registrar = Registrar(
            RegistrarSettings(realm=REALM),
            {AGENT: Credential(ha1(AGENT, REALM, PASSWORD))},
            self.rng.randbytes(32),
        )
        self.ua = UserAgent(UaConfig(), rng=random.Random(seed + 1), registrar=registrar)
        self.records: list[CallSummary] = []
        # answer after a short ring (so CANCELs meet ringing calls), hang up a few seconds after the ACK
        self.router = CallRouter(
            self.ua, RouterSettings(ring_limit=2.0, answer_delay=0.4, hold_time=3.0), on_record=self.records.append
        )
        self.report = FuzzReport(seed)
        self.now = 0.0
        self.dialogs: dict[int, Dialog] = {}  # the recent callers, by number (their Call-ID says it)
        self.callers = 0
        self._nonce = ""
        self._nonce_at = -NONCE_REFRESH
        self._current: bytes = b""  # the datagram being handled, for the examples

    # -- the UA's side -------------------------------------------------------------------
    def _escaped(self, exc: Exception) -> None:
        kind = _kind(exc)
        self.report.escapes[kind] += 1
        if kind not in self.report.examples:
            self.report.examples[kind] = repr(self._current[:2000])
            self.report.tracebacks[kind] = "".join(traceback.format_exception(exc))

    def _pump(self) -> None:
        """Hand events to the router until quiet; the phone answers our requests."""
        ua = self.ua
        try:
            while evs := ua.events():
                self.report.calls += sum(1 for e in evs if type(e).__name__ == "IncomingCall")
                self.router.handle(evs, self.now)
        except Exception as exc:  # noqa: BLE001 - an escape is what the benchmark counts
            self._escaped(exc)
        for data, peer in ua.datagrams_to_send():
            if data[:4] in (b"BYE ", b"REFE", b"UPDA"):
                self._answer_our_request(data, peer)
            elif data.startswith(b"SIP/2.0 18") or data.startswith(b"SIP/2.0 200"):
                self._learn_tag(data)

    def _learn_tag(self, data: bytes) -> None:
        if b"CSeq: 1 INVITE" not in data:
            return
        m = re.search(rb"\r\nCall-ID: fuzz-(\d{1,9})@", data)
        t = re.search(rb"\r\nTo: [^\r]*;tag=([^\r;]+)", data)
        if m is None or t is None:
            return
        d = self.dialogs.get(int(m.group(1)))
        if d is not None:
            d.to_tag = t.group(1).decode()

    def _answer_our_request(self, data: bytes, peer: tuple[str, str, int]) -> None:
        rng = self.rng
        if rng.random() < 0.2:
            return  # lost: our retransmissions and timeouts run
        try:
            req = parse_message(data)
        except SipParseError as exc:
            # not an escape but as bad: we sent a request that we cannot parse ourselves
            exc.add_note("raised parsing a request the user agent sent")
            self._escaped(exc)
            return
        if not isinstance(req, Request):
            return
        status = rng.choice((200, 200, 200, 202, 481, 500))
        reply = response_to(req, status)
        if rng.random() < 0.5:
            self._deliver(mutate(rng, reply), peer, mutated=True)
        else:
            self._deliver(reply, peer, mutated=False)

    def _deliver(self, data: bytes, peer: tuple[str, str, int], *, mutated: bool) -> None:
        if mutated:
            self.report.mutated += 1
        else:
            self.report.intact += 1
        self._current = data
        try:
            self.ua.receive(data, peer, self.now)
        except Exception as exc:  # noqa: BLE001 - an escape is what the benchmark counts
            self._escaped(exc)
        self._pump()

    def advance(self, until: float) -> None:
        """Run the clock to ``until``, firing every timer on its time (event to event, not in steps)."""
        ua = self.ua
        while True:
            try:
                at = ua.get_timer()
            except Exception as exc:  # noqa: BLE001 - an escape is what the benchmark counts
                self._escaped(exc)
                at = None
            if at is None or at > until:
                break
            self.now = max(self.now, at)
            self._current = b"<timer>"
            try:
                ua.handle_timer(self.now)
            except Exception as exc:  # noqa: BLE001 - an escape is what the benchmark counts
                self._escaped(exc)
                break
            self._pump()
        self.now = max(self.now, until)

    # -- the callers' side -----------------------------------------------------------------
    def _nonce_for_now(self) -> str:
        if self.now - self._nonce_at >= NONCE_REFRESH:
            challenge = self.ua.registrar.challenge(self.now)
            m = _NONCE_RE.search(challenge.headers[0][1])
            assert m is not None
            self._nonce, self._nonce_at = m.group(1), self.now
        return self._nonce

    def _datagram(self, d: Dialog, kind: str) -> bytes:
        if kind == "ack":
            return d.ack()
        if kind == "bye":
            return d.bye()
        if kind == "cancel":
            return d.cancel()
        if kind == "info":
            return d.info(self.rng)
        if kind == "options":
            return d.options()
        if kind == "register":
            return d.register(self._nonce_for_now(), self.rng)
        if kind == "reinvite":
            return d.reinvite()
        if kind == "ack_non_2xx":
            return d.ack_non_2xx()
        return d.invite()

    def caller(self, mutation_rate: float) -> None:
        """One new caller: a valid INVITE, then a few requests of its call or of an earlier one."""
        rng = self.rng
        n = self.callers
        self.callers += 1
        d = Dialog(n, transport=rng.choice(("UDP", "UDP", "TCP")), port=5070 + rng.randrange(50))
        self.dialogs[n] = d
        # callers well in the past are done sending: keep only the recent ones
        self.dialogs.pop(n - 32, None)
        peer = (d.transport.lower(), "127.0.0.1", d.port)
        invite = d.invite()
        if rng.random() < mutation_rate * 0.3:
            self._deliver(mutate(rng, invite), peer, mutated=True)
        else:
            self._deliver(invite, peer, mutated=False)
        for _ in range(rng.randint(1, 5)):
            self.advance(self.now + rng.choice(STEPS))
            target = d if rng.random() < 0.7 else self.dialogs.get(n - rng.randrange(20), d)
            tpeer = (target.transport.lower(), "127.0.0.1", target.port)
            data = self._datagram(target, rng.choice(KINDS))
            if rng.random() < mutation_rate:
                self._deliver(mutate(rng, data), tpeer, mutated=True)
            else:
                self._deliver(data, tpeer, mutated=False)

    def finish(self) -> FuzzReport:
        """Run the clock past every timer, then count what is still held."""
        self.advance(self.now + DRAIN)
        # one last tick, as the shell would give when any timer fires: the replay record expires on it
        self.ua.handle_timer(self.now)
        ua, rep = self.ua, self.report
        core, inbound, outbound, reg = ua._core, ua._inbound, ua._outbound, ua.registrar
        rep.leftover = {
            "server_transactions": len(core.table.server),
            "client_transactions": len(core.table.client),
            "invite_owners": len(core.table.invite_owner),
            "timer_heap": core.table.entries if ua.get_timer() is not None else 0,
            "inbound_calls": len(inbound.calls),
            "pending_refers": len(inbound._refers),
            "outbound_calls": len(outbound.calls),
            "lingering_calls": len(outbound._linger),
            "bindings": sum(len(b) for b in reg._bindings.values()),
            "binding_expiry_heap": len(reg._expiry) if reg.next_expiry() is not None else 0,
            "replay_record": len(reg._seen),
            "router_ivr_calls": len(self.router.ivr_calls),
        }
        rep.records = len(self.records)
        rep.answered_400 = ua.stats.malformed["answered"]
        rep.dropped = ua.stats.malformed["dropped"]
        rep.virtual_seconds = self.now
        return rep


def run(count: int, seed: int = 1, mutation_rate: float = 0.85) -> FuzzReport:
    """Feed at least ``count`` mutated datagrams, then drain; reads no clock."""
    driver = FuzzDriver(seed)
    while driver.report.mutated < count:
        driver.caller(mutation_rate)
    return driver.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="frontdesk bench-fuzz",
        description="Feed mutated SIP datagrams through the user agent on a virtual clock; "
        "exit 1 on any escaped exception or state left once the timers have run.",
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="mutated datagrams to feed (default 10^6)")
    parser.add_argument("--seed", type=int, default=1, help="random.Random seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    started = time.perf_counter()
    report = run(args.count, args.seed)
    report.seconds = time.perf_counter() - started
    result = report.as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        fed = report.mutated + report.intact
        print(f"fed {report.mutated} mutated + {report.intact} valid datagrams in {report.seconds:.1f} s")
        print(f"  {result['datagrams_per_second']} datagrams/s; {report.calls} calls, {report.records} recorded")
        print(f"  malformed: {report.answered_400} answered 400/505, {report.dropped} dropped ({fed} fed)")
        print(f"  escaped exceptions: {sum(report.escapes.values())}")
        for kind, n in report.escapes.most_common():
            print(f"    {n:8d}  {kind}  e.g. {report.examples[kind][:200]}")
        left = {k: v for k, v in report.leftover.items() if v}
        print(f"  state left after {report.virtual_seconds:.0f} virtual s: {left or 'none'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

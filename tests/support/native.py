"""Runs for the compiled-or-pure tests (tests/test_native.py), in this process or as ``python -m tests.support.native``.

The command prints one JSON object: which build is active, a digest of every
(event, decisions) and block row of seeded simulations of the example
scenarios, the pickle check of an engine taken mid-run, and the SIP core's
answers to a seeded corpus of valid and mutated datagrams (what the parser
made of each, the responses built, what a user agent sent and told), so a
process with ``FRONTDESK_PURE=1`` and one without can be compared
(``python -m support.native sip`` prints the SIP part alone).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import queueing
import queueing.engine
from ivr.flow import actions as fa
from ivr.flow.interpreter import start as flow_start
from ivr.flow.interpreter import step as flow_step
from ivr.flow.program import compile_ivr
from ivr.fuzz.mutate import Dialog, mutate
from ivr.fuzz.run import run as fuzz_run
from ivr.media.dtmf import TelephoneEvent
from ivr.media.g711 import PCMU
from ivr.media.rtp import RtpPacket
from ivr.media.stream import MediaStream
from ivr.settings.config import parse_config
from ivr.settings.flows import DEMO_PATH
from ivr.sip import message as sip_message
from ivr.sip.admission import Admission, AdmissionLimits
from ivr.sip.message import Request, Response, SipParseError, build_response, parse_message
from ivr.sip.registrar import Registrar, RegistrarSettings
from ivr.sip.sdp import SdpError, build_sdp, negotiate, parse_sdp
from ivr.sip.ua import CallTerminated, IncomingCall, UaConfig, UserAgent
from queueing.engine import Engine
from queueing.events import Decision, Event
from sim.scenario import load_scenario
from sim.simulation import Simulation

SCENARIOS = Path(__file__).resolve().parent.parent.parent / "sim" / "scenarios"
RUNS = (("weekday.yaml", 7), ("fault_surge.yaml", 3), ("single_queue.yaml", 11))


def engine_is_compiled() -> bool:
    return not str(queueing.engine.__file__).endswith(".py")


def run_digest(scenario: str, seed: int) -> dict[str, Any]:
    """A seeded run of ``scenario``: its size and a digest of everything the engine and the report saw."""
    trace: list[tuple[Event, list[Decision]]] = []
    result = Simulation(load_scenario(SCENARIOS / scenario), seed, trace=trace).run()
    h = hashlib.sha256()
    for event, decisions in trace:
        h.update(repr(event).encode())
        h.update(repr(decisions).encode())
    h.update(repr(result.blocks).encode())
    h.update(repr(result.samples).encode())
    h.update(repr(result.surge_changes).encode())
    return {"calls": result.calls, "events": result.events, "sha256": h.hexdigest()}


def pickle_check(scenario: str, seed: int, at: float = 0.5) -> dict[str, Any]:
    """An engine pickled after ``at`` of a run's events, then both fed the rest: do the two decide the same?"""
    trace: list[tuple[Event, list[Decision]]] = []
    Simulation(load_scenario(SCENARIOS / scenario), seed, trace=trace).run()
    split = int(len(trace) * at)
    original = Engine(load_scenario(SCENARIOS / scenario).model)
    for event, _ in trace[:split]:
        original.handle(event)
    in_books = len(original.calls)  # callers waiting, ringing or talking when the copy is taken
    timers = original.next_timer()
    copy = pickle.loads(pickle.dumps(original))
    timer_kept = copy.next_timer() == timers and copy.now == original.now
    differ = 0
    decisions = 0
    for event, recorded in trace[split:]:
        mine, theirs = original.handle(event), copy.handle(event)
        decisions += len(mine)
        differ += mine != theirs or mine != recorded
    return {
        "type": f"{type(copy).__module__}.{type(copy).__qualname__}",
        "calls_at_split": in_books,
        "next_timer_kept": timer_kept,
        "events_after": len(trace) - split,
        "decisions_after": decisions,
        "events_decided_differently": differ,
        "same_snapshot": repr(original.snapshot()) == repr(copy.snapshot()),
        "same_stats": repr(original.stats) == repr(copy.stats),
    }


# ------------------------------------------------------------------ the SIP core


def sip_is_compiled() -> bool:
    return not str(sip_message.__file__).endswith(".py")


def sip_corpus(count: int, seed: int) -> list[bytes]:
    """Every request of a few callers' calls, intact, then ``count`` mutations of them (seeded)."""
    rng = random.Random(seed)
    valid: list[bytes] = []
    for n in range(8):
        d = Dialog(n, transport="TCP" if n % 4 == 3 else "UDP", to_tag=f"ours-{n}")
        valid += [d.invite(), d.ack(), d.reinvite(), d.info(rng), d.options(), d.bye(), d.cancel(), d.ack_non_2xx()]
        valid.append(d.register("bm9uY2U=", rng))
    valid += [
        b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nf: <sip:a@b>;tag=1\r\n"
        b"t: <sip:c@d>;tag=2\r\ni: r1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
        b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1,\r\n SIP/2.0/TCP g:5;received=1.2.3.4\r\n"
        b'From: "A, B" <sip:a@b;p=1>;tag=9\r\nTo: sip:b@c\r\nCall-ID: c2\r\nCSeq: 7 OPTIONS\r\n\r\n',
    ]
    return valid + [mutate(rng, rng.choice(valid)) for _ in range(count)]


def _what_parsed(data: bytes) -> str:
    """What the parser made of one datagram, and the response built to it: every field, as text."""
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        return repr(("error", exc.reason, exc.status, exc.partial))
    parts: list[object] = [msg]
    for name in ("cseq", "top_via", "from_", "to", "call_id"):
        try:
            parts.append(getattr(msg, name))
        except SipParseError as exc:
            parts.append(("error", exc.reason, exc.status))
    parts.append(msg.get_all("via") + msg.get_all("contact") + msg.get_all("record-route"))
    if isinstance(msg, Request):
        answer = build_response(msg, 200, to_tag="t1", extra=(("Server", "x"),), received="10.0.0.1", rport=5070)
        parts.append(answer.to_bytes())
        parts.append(build_response(msg, 100).to_bytes())
        parts.append(_what_sdp(msg.body))
    else:
        assert isinstance(msg, Response)
        parts.append(msg.to_bytes())
    return repr(parts)


def _what_sdp(body: bytes) -> str:
    try:
        negotiated = negotiate(parse_sdp(body))
    except SdpError as exc:
        return repr(("error", exc.reason, exc.status))
    return repr((negotiated, build_sdp("127.0.0.1", 20000, session_id=1, negotiated=negotiated)))


def _ua_conversation(corpus: list[bytes], seed: int) -> dict[str, Any]:
    """The corpus through one user agent on a virtual clock (calls answered or refused in turn, timers run)."""
    registrar = Registrar(RegistrarSettings(), {}, bytes(32))  # a fixed secret: its nonces are the same each run
    ua = UserAgent(UaConfig(), rng=random.Random(seed), registrar=registrar)
    rng = random.Random(seed + 1)
    sent = hashlib.sha256()
    told = hashlib.sha256()
    now = 0.0
    datagrams = answered = 0
    for data in corpus:
        peer = ("tcp" if b"/TCP " in data[:200] else "udp", "127.0.0.1", 5070)
        ua.receive(data, peer, now)
        for event in ua.events():
            told.update(f"{type(event).__name__} {event.call.call_id}".encode("utf-8", "surrogateescape"))
            if isinstance(event, IncomingCall):
                if rng.random() < 0.7:
                    ua.answer(event.call, now, rtp_port=20000 + answered % 1000)
                    answered += 1
                else:
                    ua.reject(event.call, 486, now)
            elif not isinstance(event, CallTerminated) and rng.random() < 0.3:
                ua.hangup(event.call, now)
        for out, to in ua.datagrams_to_send():
            sent.update(repr(to).encode() + out)
            datagrams += 1
        now += rng.choice((0.0, 0.001, 0.05, 0.7, 3.0))
        at = ua.get_timer()
        while at is not None and at <= now:
            ua.handle_timer(at)
            at = ua.get_timer()
    return {
        "datagrams_sent": datagrams,
        "answered": answered,
        "sent_sha256": sent.hexdigest(),
        "events_sha256": told.hexdigest(),
        "stats": repr(sorted(vars_of(ua.stats).items())),
    }


def _admission(corpus: list[bytes], seed: int) -> dict[str, Any]:
    """The corpus through flood control from a few sources on a virtual clock: every verdict and refusal."""
    limits = AdmissionLimits(requests_per_second=15, new_calls_per_second=3, new_calls_per_network=5,
                             block_seconds=2.0, max_new_calls_per_second=12, max_sources=4, max_blocked=2)  # fmt: skip
    adm = Admission(limits, lambda host: host == "10.9.9.9", "t0")
    rng = random.Random(seed)
    told = hashlib.sha256()
    verdicts: dict[str, int] = {}
    now = 0.0
    for data in corpus:
        host = rng.choice(("10.0.0.1", "10.0.0.2", "10.0.1.3", "10.9.9.9", "2001:db8::1", "2001:db8::2", "10.5.5.5"))
        name = "BLOCKED"
        if not adm.blocked(host, now):
            verdict = adm.check(data, host, now)
            if verdict.name == "NEW_CALL":
                verdict = adm.take_new_call(host, now)
            name = verdict.name
            told.update(repr(adm.refusal(data)).encode())
        told.update(name.encode())
        verdicts[name] = verdicts.get(name, 0) + 1
        now += rng.choice((0.0, 0.0, 0.001, 0.01, 0.05))
    return {"verdicts_sha256": told.hexdigest(), "verdicts": verdicts}


def _media(seed: int) -> dict[str, Any]:
    """Streams paced, played to, spoken to (voice, keys, junk, a new source) and recorded, on a virtual clock."""
    rng = random.Random(seed)
    sent = hashlib.sha256()
    told = hashlib.sha256()
    now = 0.0
    stream = MediaStream(20000, ("10.0.0.1", 4000), PCMU, 0, 101, 0x11223344, 7, 1000, now, signalling_host="10.0.0.1")
    other = MediaStream(20002, ("10.0.0.2", 4002), PCMU, 0, 101, 0x55667788, 9, 5000, now)
    stream.bridge(other)
    stream.start_recording(max_seconds=2.0, silence_seconds=0.5)
    for k in range(600):
        if k % 150 == 10:
            stream.play([[bytes([k % 256]) * 160] * rng.randint(1, 30)], play_id=k)
        kind = rng.random()
        if kind < 0.5:
            voice = bytes(rng.randrange(256) for _ in range(160))
            data = RtpPacket(0, k, k * 160, 0xABCD, voice).serialize()
        elif kind < 0.6:
            event = TelephoneEvent(rng.randrange(16), k % 2 == 1, 10, 400).serialize()
            data = RtpPacket(101, k, 90_000 + 800 * (k // 20), 0xABCD, event).serialize()
        elif kind < 0.7:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:
            data = b""
        if data:
            stream.receive(data, (rng.choice(("10.0.0.1", "10.0.0.1", "10.6.6.6")), 4000), now)
        for s in (stream, other):
            if k % 37 == 5:
                s.skip(2)
            sent.update(s.next_packet())
            told.update(repr(s.drain_events()).encode())
        now += 0.02
    return {
        "sent_sha256": sent.hexdigest(),
        "events_sha256": told.hexdigest(),
        "counts": repr((stream.packets_in, stream.packets_out, stream.bad_packets, sorted(stream.dropped.items()))),
    }


def _flow_event(rng: random.Random, state: fa.FlowState, actions: list[fa.FlowAction], now: float) -> fa.FlowEvent:
    """What a caller, a timer or a queue might do next: mostly what the state waits for, sometimes a stray one."""
    timers = [a.name for a in actions if isinstance(a, fa.StartTimer)]
    pick = rng.random()
    if pick < 0.3:
        return fa.Digit(rng.choice("0123456789*#"))
    if pick < 0.45 and timers:
        return fa.TimerExpired(rng.choice(timers))
    if pick < 0.7:
        return fa.PlaybackDone(state.play_id - rng.choice((0, 0, 0, 1)))  # now and then an earlier prompt's
    if pick < 0.8:
        return fa.QueueLeft(rng.choice(("connected", "callback", "message", "timeout")))
    if pick < 0.88:
        return fa.CallbackDone(rng.choice(("booked", "exists", "cancelled", "none", "failed")), rng.randint(1, 90))
    if pick < 0.95:
        return fa.RecordingDone(f"rec-{now:.0f}.wav", rng.uniform(0, 60), rng.choice(("max_length", "silence", "key")))
    return fa.HungUp()


def _flow(calls: int, seed: int) -> dict[str, Any]:
    """The demo IVR walked by seeded random callers: every state and action each step returned, digested."""
    rng = random.Random(seed)
    program = compile_ivr(parse_config(DEMO_PATH.read_text(), str(DEMO_PATH)).ivr)
    told = hashlib.sha256()
    steps = finished = 0
    for n in range(calls):
        now = float(n)
        info = fa.CallInfo(
            caller=rng.choice(("5550001", "09001234", "4445001", "")),
            called=rng.choice(("", "2000", "3000", "100")),
            groups=frozenset(rng.sample(("vip", "spam", "outage"), rng.randint(0, 2))),
            notices=tuple(rng.sample(("notice_a", "notice_b"), rng.randint(0, 1))),
            surge=rng.random() < 0.3,
            local_time_minutes=rng.randrange(24 * 60),
            weekday=rng.randrange(7),
            queues=rng.random() < 0.7,
            callbacks=rng.random() < 0.7,
        )
        state, actions = flow_start(program, info, now)
        told.update(repr((state, actions)).encode())
        for _ in range(40):
            if state.finished:
                finished += 1
                break
            now += rng.uniform(0, 5)
            state, actions = flow_step(state, _flow_event(rng, state, actions, now), now)
            told.update(repr((state, actions)).encode())
            steps += 1
    return {"calls": calls, "steps": steps, "finished": finished, "sha256": told.hexdigest()}


def vars_of(stats: object) -> dict[str, object]:
    """The counters of a SipStats (a compiled class has no __dict__)."""
    names = [n for n in dir(stats) if not n.startswith("_") and not callable(getattr(stats, n))]
    out = {n: repr(getattr(stats, n)) for n in names}
    latency = getattr(stats, "answer_latency")  # noqa: B009  (its repr would show an address)
    out["answer_latency"] = repr((latency.counts, latency.count, latency.total))
    return out


def sip_report(count: int = 4000, seed: int = 11) -> dict[str, Any]:
    corpus = sip_corpus(count, seed)
    parsed = hashlib.sha256()
    errors = 0
    for data in corpus:
        what = _what_parsed(data)
        errors += what.startswith("('error'")
        parsed.update(what.encode("utf-8", "surrogateescape"))
    fuzz = fuzz_run(1500, seed=seed).as_dict()
    fuzz.pop("seconds")
    fuzz.pop("datagrams_per_second")
    return {
        "sip_compiled": sip_is_compiled(),
        "datagrams": len(corpus),
        "refused_by_parser": errors,
        "parsed_sha256": parsed.hexdigest(),
        "conversation": _ua_conversation(corpus, seed),
        "admission": _admission(corpus, seed),
        "media": _media(seed),
        "flow": _flow(400, seed),
        "fuzz": fuzz,
    }


def report() -> dict[str, Any]:
    return {
        "status": queueing.native_status(),
        "engine_compiled": engine_is_compiled(),
        "runs": {f"{name}:{seed}": run_digest(name, seed) for name, seed in RUNS},
        "pickle": pickle_check("fault_surge.yaml", 3),
        "sip": sip_report(),
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["sip"]:
        json.dump({"status": queueing.native_status(), "sip": sip_report()}, sys.stdout)
    else:
        json.dump(report(), sys.stdout)

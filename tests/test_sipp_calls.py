"""Calls from a real SIPp against the real server, plus hand-made requests over UDP.

Every test starts ``frontdesk serve`` (conftest ``server_factory``), drives it
with bounded SIPp runs (``-m`` calls, ``-timeout``/``-timeout_error``) or raw
UDP requests, and then checks three views of what happened: SIPp's own
verdict (exit code and counters), the call records in SQLite and the
Prometheus metrics.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from support.records import wait_for_records
from support.server import Server
from support.sipp import SippRun, UdpSipClient, new_token, run_sipp, sdp_offer

pytestmark = pytest.mark.sipp

ServerFactory = Callable[..., Server]

SIPP_CALL_ID = re.compile(r"^\d+-\d+@127\.0\.0\.1$")


def assert_all_calls_succeeded(run: SippRun, calls: int) -> None:
    assert run.returncode == 0, run.report()
    assert run.successful == calls, run.report()
    assert run.failed == 0, run.report()


def assert_records(
    rows: list[dict[str, object]],
    calls: int,
    *,
    outcome: str,
    hangup_by: str,
    transport: str,
    answered: bool,
) -> None:
    summary = Counter((r["outcome"], r["hangup_by"], r["transport"]) for r in rows)
    assert len(rows) == calls, f"expected {calls} call records, got {len(rows)}: {dict(summary)}"
    assert summary == {(outcome, hangup_by, transport): calls}, dict(summary)
    call_ids = [str(r["call_id"]) for r in rows]
    assert len(set(call_ids)) == calls, "one record per call"
    assert all(SIPP_CALL_ID.match(c) for c in call_ids), call_ids[:5]
    for r in rows:
        assert r["caller"] == "sipp", r
        assert r["called"] == "service", r
        assert r["invite_at"] is not None and r["end_at"] is not None, r
        if answered:
            assert r["answer_at"] is not None, r
            latency = r["answer_latency_s"]
            assert isinstance(latency, float) and 0 <= latency < 1.0, r
        else:
            assert r["answer_at"] is None and r["answer_latency_s"] is None, r


def _when(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


# -- 1 + 3: plain calls, the caller hangs up -----------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_plain_calls_complete(transport: str, server: Server, sipp: str, tmp_path: Path) -> None:
    calls = 50
    run = run_sipp(
        sipp,
        server.sip_target,
        tmp_path / "sipp",
        sn="uac",
        calls=calls,
        rate=50,
        transport="u1" if transport == "udp" else "t1",
        timeout=20,
    )
    assert_all_calls_succeeded(run, calls)

    rows = wait_for_records(server.db_path, calls)
    # the embedded uac scenario hangs up itself (BYE) right after its ACK:
    # hold_time (2 s here) never fires
    assert_records(rows, calls, outcome="completed", hangup_by="caller", transport=transport, answered=True)

    assert server.metric("frontdesk_sip_requests_received_total", method="INVITE") == calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="200") == calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="BYE", status="200") == calls
    assert server.metric("frontdesk_sip_answer_latency_seconds_count") == calls
    assert server.metric("frontdesk_calls_ended_total", outcome="completed") == calls
    assert server.metric("frontdesk_calls_active") == 0
    assert server.healthz()["calls_active"] == 0


def collected(server: Server) -> float:
    return sum(server.metric("python_gc_objects_collected_total", generation=g) for g in "012")


def test_ended_calls_are_freed_at_once_not_left_to_the_garbage_collector(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    """An IVR call and its RTP stream point at each other while the call lasts; at its end that cycle is cut, so
    the call, its stream, dialog and flow go with their last reference. Left to the collector, each call was
    about 25 objects for it to find (a young collection's pause grew with them and delayed SIP)."""
    server = server_factory({"security": {"trusted_networks": ["127.0.0.1/32"]}})  # a trunk: no per-source cap
    calls = 600
    before, runs = collected(server), server.metric("python_gc_collections_total")
    run = run_sipp(sipp, server.sip_target, tmp_path / "sipp", sn="uac", calls=calls, rate=200, timeout=30)
    assert_all_calls_succeeded(run, calls)
    wait_for_records(server.db_path, calls)
    assert server.metric("python_gc_collections_total") > runs  # the collector did run meanwhile
    assert collected(server) - before < calls / 4  # < 0.25 an ended call; about 25 when calls were cycles
    assert server.metric("process_open_fds") > 0 and server.metric("process_cpu_seconds_total") > 0


# -- 2: CANCEL before the answer --------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_cancel_before_answer(transport: str, server_factory: ServerFactory, sipp: str, tmp_path: Path) -> None:
    server = server_factory({"sip": {"answer_delay": 2.0}})
    calls = 10
    run = run_sipp(
        sipp,
        server.sip_target,
        tmp_path / "sipp",
        scenario="uac_cancel.xml",
        calls=calls,
        rate=20,
        transport="u1" if transport == "udp" else "t1",
        timeout=15,
    )
    assert_all_calls_succeeded(run, calls)

    rows = wait_for_records(server.db_path, calls)
    assert_records(rows, calls, outcome="cancelled", hangup_by="caller", transport=transport, answered=False)

    assert server.metric("frontdesk_sip_responses_sent_total", method="CANCEL", status="200") == calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="487") == calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="200") == 0
    assert server.metric("frontdesk_calls_ended_total", outcome="cancelled") == calls
    assert server.metric("frontdesk_calls_active") == 0


# -- 4: the server hangs up after hold_time ----------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_server_hangs_up_after_hold_time(
    transport: str, server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    server = server_factory({"sip": {"hold_time": 0.5}})
    calls = 10
    run = run_sipp(
        sipp,
        server.sip_target,
        tmp_path / "sipp",
        scenario="uac_server_bye.xml",
        calls=calls,
        rate=20,
        transport="u1" if transport == "udp" else "t1",
        timeout=15,
    )
    assert_all_calls_succeeded(run, calls)

    rows = wait_for_records(server.db_path, calls)
    assert_records(rows, calls, outcome="completed", hangup_by="frontdesk", transport=transport, answered=True)
    for r in rows:
        # hung up by the hold timer (armed at the ACK): not before hold_time after the answer
        held = (_when(r["end_at"]) - _when(r["answer_at"])).total_seconds()
        assert 0.45 <= held < 3.0, r

    assert server.metric("frontdesk_sip_requests_sent_total", method="BYE") == calls
    assert server.metric("frontdesk_sip_responses_received_total", method="BYE", status="200") == calls
    assert server.metric("frontdesk_sip_requests_received_total", method="BYE") == 0
    assert server.metric("frontdesk_calls_active") == 0


def test_caller_whose_rtp_never_comes_is_hung_up_for_media_timeout(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    # SIPp's callers send no RTP: with a 1 s media timeout the server ends each call with BYE
    server = server_factory({"sip": {"hold_time": 60}, "media": {"timeout": 1.0}})
    calls = 3
    run = run_sipp(
        sipp, server.sip_target, tmp_path / "sipp", scenario="uac_server_bye.xml", calls=calls, rate=10, timeout=15
    )
    assert_all_calls_succeeded(run, calls)
    rows = wait_for_records(server.db_path, calls)
    assert {(r["outcome"], r["hangup_by"]) for r in rows} == {("media_timeout", "frontdesk")}
    for r in rows:
        # checked once a second: gone between 1 and about 2.5 s after the answer
        held = (_when(r["end_at"]) - _when(r["answer_at"])).total_seconds()
        assert 0.9 <= held < 3.0, r
    assert server.metric("frontdesk_media_timeouts_total") == calls
    assert server.metric("frontdesk_calls_ended_total", outcome="media_timeout") == calls


# -- 5: packet loss -----------------------------------------------------------------------


def test_calls_complete_through_packet_loss(server_factory: ServerFactory, sipp: str, tmp_path: Path) -> None:
    # hold_time far beyond the run: every call is ended by the caller's BYE
    server = server_factory({"sip": {"hold_time": 60}})
    calls = 100
    # uac_lossy.xml is SIPp's embedded uac with transaction-matched responses;
    # see the comment at its top for why `-sn uac` is not loss-safe
    run = run_sipp(
        sipp,
        server.sip_target,
        tmp_path / "sipp",
        scenario="uac_lossy.xml",
        calls=calls,
        rate=25,
        lost=10,
        timeout=45,
    )
    assert_all_calls_succeeded(run, calls)
    assert run.count("Retransmissions") > 0, run.report()

    rows = wait_for_records(server.db_path, calls)
    assert_records(rows, calls, outcome="completed", hangup_by="caller", transport="udp", answered=True)

    # lost 200s and lost ACKs are made good by our 200 retransmissions
    assert server.metric("frontdesk_sip_retransmissions_total", direction="sent") > 0
    assert server.metric("frontdesk_sip_retransmissions_total") > 0
    # copies are absorbed, not answered as new transactions
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="200") == calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="BYE", status="200") == calls
    assert server.metric("frontdesk_calls_ended_total", outcome="completed") == calls
    assert server.metric("frontdesk_calls_active") == 0


# -- 6: single requests and answers ----------------------------------------------------------


def _assert_echoes(reply_headers: dict[str, str | None], sent: bytes) -> None:
    """Via, From, Call-ID and CSeq of a response copy the request's (RFC 3261 8.2.6.2)."""
    text = sent.decode()
    for name in ("via", "from", "call-id", "cseq"):
        line = next(x for x in text.split("\r\n") if x.lower().startswith(name + ":"))
        sent_value = line.split(":", 1)[1].strip()
        got = reply_headers[name] or ""
        if name == "via":  # may gain received/rport parameters
            assert got.startswith(sent_value.removesuffix(";rport")), (got, sent_value)
        else:
            assert got == sent_value, (name, got, sent_value)


def test_options_answered_with_allow(server: Server) -> None:
    with UdpSipClient(server.sip_port) as ua:
        req = ua.build("OPTIONS", extra=("Accept: application/sdp",))
        ua.send(req)
        reply = ua.final_reply()
    assert reply.status == 200, reply.raw
    allow = {m.strip().upper() for v in reply.get_all("allow") for m in v.split(",")}
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"} <= allow, allow
    _assert_echoes({n: reply.get(n) for n in ("via", "from", "call-id", "cseq")}, req)
    assert server.metric("frontdesk_sip_responses_sent_total", method="OPTIONS", status="200") == 1


def test_unknown_method_gets_501(server: Server) -> None:
    with UdpSipClient(server.sip_port) as ua:
        req = ua.build("FOO")
        ua.send(req)
        reply = ua.final_reply()
    assert reply.status == 501, reply.raw
    assert reply.get("cseq") == "1 FOO"
    _assert_echoes({n: reply.get(n) for n in ("via", "from", "call-id", "cseq")}, req)
    assert server.metric("frontdesk_sip_requests_received_total", method="other") == 1
    assert server.metric("frontdesk_sip_responses_sent_total", method="other", status="501") == 1


@pytest.mark.parametrize(
    "cseq",
    [
        pytest.param("abc OPTIONS", id="not-a-number"),
        pytest.param("1", id="no-method"),
        pytest.param("1 INVITE", id="method-mismatch"),
        # RFC 3261 8.1.1.5: the number MUST be a 32-bit unsigned integer (< 2**31)
        pytest.param("4294967296 OPTIONS", id="beyond-32-bits"),
    ],
)
def test_malformed_cseq_gets_400(cseq: str, server: Server) -> None:
    with UdpSipClient(server.sip_port) as ua:
        ua.send(ua.build("OPTIONS", cseq=cseq))
        reply = ua.final_reply()
    assert reply.status == 400, reply.raw
    assert reply.reason.startswith("Bad Request"), reply.reason
    assert reply.get("cseq") == cseq
    assert server.metric("frontdesk_sip_malformed_messages_total", action="answered") == 1
    # the server keeps serving after a malformed request
    with UdpSipClient(server.sip_port) as ua:
        ua.send(ua.build("OPTIONS"))
        assert ua.final_reply().status == 200


def test_bye_for_unknown_call_gets_481(server: Server) -> None:
    with UdpSipClient(server.sip_port) as ua:
        to = f"<sip:service@127.0.0.1:{server.sip_port}>;tag={new_token()}"
        req = ua.build("BYE", cseq="2 BYE", to=to)
        ua.send(req)
        reply = ua.final_reply()
    assert reply.status == 481, reply.raw
    _assert_echoes({n: reply.get(n) for n in ("via", "from", "call-id", "cseq")}, req)
    assert server.metric("frontdesk_sip_responses_sent_total", method="BYE", status="481") == 1
    assert server.metric("frontdesk_calls_ended_total", outcome="completed") == 0


def test_invite_with_unsupported_codec_gets_488(server: Server) -> None:
    branch = "z9hG4bK" + new_token()
    call_id = new_token() + "@127.0.0.1"
    from_tag = new_token()
    with UdpSipClient(server.sip_port) as ua:
        offer = sdp_offer("18", ("18 G729/8000",))
        req = ua.build("INVITE", branch=branch, call_id=call_id, from_tag=from_tag, body=offer)
        ua.send(req)
        reply = ua.final_reply()
        assert reply.status == 488, reply.raw
        assert reply.get("cseq") == "1 INVITE"
        _assert_echoes({n: reply.get(n) for n in ("via", "from", "call-id", "cseq")}, req)
        # ACK the 488 in its transaction (same branch); the 488 must then stop coming
        ack = ua.build("ACK", cseq="1 ACK", branch=branch, call_id=call_id, from_tag=from_tag, to=reply.get("to") or "")
        ua.send(ack)
        late = ua.replies_within(0.8)  # the first retransmission would be due after T1 = 0.5 s
    assert [r.status for r in late] == [], "488 retransmitted after the ACK"
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="488") == 1
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="200") == 0
    assert server.metric("frontdesk_calls_active") == 0


def test_reinvite_in_call_then_bye(server: Server, sipp: str, tmp_path: Path) -> None:
    # hold_time is 2 s (conftest default): the scenario's BYE comes well before
    calls = 5
    run = run_sipp(
        sipp, server.sip_target, tmp_path / "sipp", scenario="uac_reinvite.xml", calls=calls, rate=10, timeout=15
    )
    assert_all_calls_succeeded(run, calls)

    rows = wait_for_records(server.db_path, calls)
    assert_records(rows, calls, outcome="completed", hangup_by="caller", transport="udp", answered=True)
    assert server.metric("frontdesk_sip_requests_received_total", method="INVITE") == 2 * calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="200") == 2 * calls
    assert server.metric("frontdesk_sip_responses_sent_total", method="BYE", status="200") == calls
    assert server.metric("frontdesk_calls_ended_total", outcome="completed") == calls
    assert server.metric("frontdesk_calls_active") == 0


def test_final_responses_outside_a_dialog_carry_a_to_tag(server: Server) -> None:
    """RFC 3261 8.2.6.2: when the request's To has no tag, the UAS MUST add one
    to its response (only a 100 Trying may go without)."""
    missing = []
    with UdpSipClient(server.sip_port) as ua:
        requests = {
            "OPTIONS 200": ua.build("OPTIONS"),
            "FOO 501": ua.build("FOO"),
            "OPTIONS with bad CSeq 400": ua.build("OPTIONS", cseq="abc OPTIONS"),
            "INVITE G729 488": ua.build("INVITE", body=sdp_offer("18", ("18 G729/8000",))),
        }
        for what, req in requests.items():
            ua.send(req)
            reply = ua.final_reply()
            assert str(reply.status) == what.rsplit(" ", 1)[1], (what, reply.raw)
            if ";tag=" not in (reply.get("to") or "").lower():
                missing.append(f"{what}: To: {reply.get('to')}")
    assert not missing, "responses without a To tag:\n" + "\n".join(missing)

"""The demo IVR walked by SIPp: dial in, press keys with SIPp's own RFC 4733 captures.

Every test starts ``frontdesk serve`` with the built-in demo flow
(ivr/settings/demo.yaml), dials in with one or two bounded SIPp runs (scenarios
tests/sipp/ivr_*.xml, caller numbers from an ``-inf`` CSV, keys played from
/usr/share/sip-tester/dtmf_2833_*.pcap, speech from g711a.pcap) and then
checks what the server kept: call records (ivr_path, keys, ivr_outcomes,
complaint, recording), the text-message outbox, recordings and /metrics.

Timing: the demo's welcome prompt lasts about 2.3 s and the main menu
takes keys while it plays (barge-in), so the scenarios press their first key
3.0 s after the ACK. Prompts are rendered once per session into a shared
cache.
"""

from __future__ import annotations

import array
import json
import math
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from support.demo import CALLER, GROUP_CALLER, demo_ivr
from support.records import wait_for_records
from support.server import ROOT, Server
from support.sipp import SippRun, dial

from ivr.cli import main as cli_main

pytestmark = pytest.mark.sipp

ServerFactory = Callable[..., Server]

ADMIN_TOKEN = "ivr-sipp-admin-token-0123456789"
OTHER_CALLER = "4155550199"  # outside every group too
BLOCKED = "6660000"  # blocked: listed number (R5)
BLOCKED_PATTERN = "0900123456"  # blocked: pattern 0900\d*

DEMO = demo_ivr()
DEMO_NODES = DEMO["flows"]["main"]["nodes"]
MENU_PATH = ["welcome", "surge_check", "main_menu"]
SPEECH_PCAP = Path("/usr/share/sip-tester/g711a.pcap")
SPEECH_SECONDS = 7.05  # RTP timestamp span of g711a.pcap: 236 packets of 30 ms
DTMF_PACKETS = 10  # packets in each dtmf_2833_*.pcap
SPEECH_PACKETS = 236


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the demo's prompts are rendered by espeak-ng once."""
    return tmp_path_factory.mktemp("prompt-cache")


@pytest.fixture
def ivr_server(server_factory: ServerFactory, prompt_cache: Path, tmp_path: Path) -> Server:
    return server_factory(
        {
            "media": {"prompt_cache": str(prompt_cache), "recordings_dir": str(tmp_path / "recordings")},
            # the IVR ends calls; the hold timer of the bare SIP core must not
            "sip": {"hold_time": 60},
            "admin": {"token": ADMIN_TOKEN},
            # SIPp is the trunk here: its callers' numbers are believed, so they get their texts
            "security": {"trusted_networks": ["127.0.0.1/32"]},
        }
    )


def dial_together(sipp: str, server: Server, workdir: Path, runs: dict[str, tuple[list[str], float]]) -> list[SippRun]:
    """Several scenarios at the same time (each ``scenario: (callers, timeout)``)."""
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = [
            pool.submit(dial, sipp, server, workdir / name.removesuffix(".xml"), name, callers, timeout)
            for name, (callers, timeout) in runs.items()
        ]
        return [f.result() for f in futures]


def assert_succeeded(run: SippRun, calls: int) -> None:
    assert run.returncode == 0, run.report()
    assert run.successful == calls, run.report()
    assert run.failed == 0, run.report()


def records_by_caller(server: Server, calls: int) -> dict[str, dict[str, object]]:
    rows = wait_for_records(server.db_path, calls, timeout=5)
    assert len(rows) == calls, rows
    by_caller = {str(r["caller"]): r for r in rows}
    assert len(by_caller) == calls, rows
    return by_caller


def path_of(record: dict[str, object]) -> list[str]:
    return str(record["ivr_path"] or "").split()


def keys_of(record: dict[str, object]) -> list[str]:
    return list(str(record["keys"] or ""))  # one character per key, in order


def outcomes_of(record: dict[str, object]) -> list[str]:
    return [o for o in str(record["ivr_outcomes"] or "").split(",") if o]


def text_messages(server: Server) -> list[dict[str, object]]:
    con = sqlite3.connect(server.db_path, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM text_messages ORDER BY id")]
        except sqlite3.OperationalError:  # table not created
            return []
    finally:
        con.close()


def demo_text(node: str) -> str:
    return str(DEMO_NODES[node]["text"])


def node_visits(server: Server, node: str) -> float:
    return server.metric("frontdesk_ivr_node_visits_total", flow="main", node=node)


def assert_rtp_out(server: Server, seconds: float) -> None:
    """The server sends a 20 ms packet per call and tick (prompt or silence) while the call lasts."""
    out = server.metric("frontdesk_rtp_packets_total", direction="out")
    assert 0.8 * seconds / 0.02 <= out <= 1.2 * seconds / 0.02 + 50, (out, seconds)


def call_seconds(record: dict[str, object]) -> float:
    answer = datetime.fromisoformat(str(record["answer_at"]))
    end = datetime.fromisoformat(str(record["end_at"]))
    return (end - answer).total_seconds()


def alaw_sample(a: int) -> int:
    """G.711 A-law to 16-bit linear (ITU-T G.711), independent of the server's codec."""
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = t + 8 if seg == 0 else (t + 0x108) << max(seg - 1, 0)
    return t if a & 0x80 else -t


def pcap_speech() -> list[int]:
    """The linear samples SIPp plays from g711a.pcap (Ethernet/IPv4/UDP/RTP, payload type 8)."""
    data = SPEECH_PCAP.read_bytes()
    table = [alaw_sample(a) for a in range(256)]
    out: list[int] = []
    off = 24  # pcap file header
    while off + 16 <= len(data):
        incl = int.from_bytes(data[off + 8 : off + 12], "little")
        rtp = data[off + 16 + 42 : off + 16 + incl]
        off += 16 + incl
        if len(rtp) > 12 and rtp[1] & 0x7F == 8:
            out += (table[b] for b in rtp[12:])
    return out


def envelope(samples: list[int] | array.array[int], width: int = 240) -> list[float]:
    return [sum(map(abs, samples[i : i + width])) / width for i in range(0, len(samples) - width + 1, width)]


def best_correlation(a: list[float], b: list[float], max_lag: int) -> float:
    """The highest Pearson correlation of ``a`` and ``b`` shifted by up to ``max_lag`` steps."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        if n < 10:
            continue
        x, y = x[:n], y[:n]
        mx, my = sum(x) / n, sum(y) / n
        cov = sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True))
        vx = sum((p - mx) ** 2 for p in x)
        vy = sum((q - my) ** 2 for q in y)
        if vx > 0 and vy > 0:
            best = max(best, cov / math.sqrt(vx * vy))
    return best


# -- 1: main menu -> hotkey (R7) --------------------------------------------------------


def test_hotkey_plays_answer_and_texts_the_caller(ivr_server: Server, sipp: str, tmp_path: Path) -> None:
    run = dial(sipp, ivr_server, tmp_path / "sipp", "ivr_hotkey.xml", [CALLER], timeout=15)
    assert_succeeded(run, 1)

    rec = records_by_caller(ivr_server, 1)[CALLER]
    assert path_of(rec) == [*MENU_PATH, "hot_topic"], rec
    assert keys_of(rec) == ["2"], rec
    outcomes = outcomes_of(rec)
    assert outcomes[0] == "hotkey", rec
    assert not any(o.startswith("notice:") for o in outcomes), rec
    assert rec["outcome"] == "completed" and rec["hangup_by"] == "caller", rec

    texts = text_messages(ivr_server)
    assert [(t["to_number"], t["reason"]) for t in texts] == [(CALLER, "hotkey")], texts
    assert texts[0]["body"] == demo_text("hot_topic"), texts

    m = ivr_server.metric
    assert m("frontdesk_ivr_hotkey_uses_total") == 1
    assert node_visits(ivr_server, "main_menu") == 1
    assert node_visits(ivr_server, "hot_topic") == 1
    assert m("frontdesk_text_messages_queued_total", reason="hotkey") == 1
    assert m("frontdesk_dtmf_received_total", source="rtp") == 1
    assert m("frontdesk_dtmf_received_total", source="info") == 0
    assert m("frontdesk_ivr_notices_played_total") == 0
    assert m("frontdesk_rtp_packets_total", direction="in") == DTMF_PACKETS
    assert_rtp_out(ivr_server, call_seconds(rec))


# -- 2: targeted notice (R6) --------------------------------------------------------------


def test_notice_plays_only_to_the_group_and_before_the_menu(ivr_server: Server, sipp: str, tmp_path: Path) -> None:
    # same scenario for both callers: key 2 at 3.0 s, key 3 at 14.2 s
    run = dial(sipp, ivr_server, tmp_path / "sipp", "ivr_notice.xml", [CALLER, GROUP_CALLER], timeout=25)
    assert_succeeded(run, 2)
    records = records_by_caller(ivr_server, 2)

    # outside the group: no notice, the main menu takes key 2 at 3.0 s (key 3
    # comes while the hot-topic answer plays, which takes no keys)
    other = records[CALLER]
    assert path_of(other) == [*MENU_PATH, "hot_topic"], other
    assert not any(o.startswith("notice:") for o in outcomes_of(other)), other
    assert "hotkey" in outcomes_of(other), other

    # in the group: the notice is the first thing noted, before any node;
    # key 2 at 3.0 s falls into the notice (about 11 s) and chooses nothing,
    # the main menu comes after it and takes key 3 at 14.2 s
    grouped = records[GROUP_CALLER]
    outcomes = outcomes_of(grouped)
    assert outcomes[0] == "notice:fault_notice", grouped
    assert [o for o in outcomes if o.startswith("notice:")] == ["notice:fault_notice"], grouped
    assert path_of(grouped) == [*MENU_PATH, "self_service"], grouped
    assert keys_of(grouped) == ["2", "3"], grouped
    assert "hotkey" not in outcomes and "self_service" in outcomes, grouped

    texts = sorted((t["to_number"], t["reason"]) for t in text_messages(ivr_server))
    assert texts == [(CALLER, "hotkey"), (GROUP_CALLER, "self_service")], texts

    m = ivr_server.metric
    assert m("frontdesk_ivr_notices_played_total", notice="fault_notice") == 1
    assert m("frontdesk_ivr_notices_played_total") == 1
    assert m("frontdesk_ivr_hotkey_uses_total") == 1
    assert node_visits(ivr_server, "main_menu") == 2
    assert m("frontdesk_text_messages_queued_total", reason="hotkey") == 1
    assert m("frontdesk_text_messages_queued_total", reason="self_service") == 1
    assert m("frontdesk_dtmf_received_total", source="rtp") == 4


# -- 3: invalid key, then a valid one; and a menu that runs out of retries ------------------


def test_invalid_key_then_retry(ivr_server: Server, sipp: str, tmp_path: Path) -> None:
    retry, failure = dial_together(
        sipp,
        ivr_server,
        tmp_path,
        {"ivr_invalid_retry.xml": ([CALLER], 15), "ivr_menu_failure.xml": ([OTHER_CALLER], 20)},
    )
    assert_succeeded(retry, 1)
    assert_succeeded(failure, 1)
    records = records_by_caller(ivr_server, 2)

    # 7 is no choice: the menu says so and asks again (same node, so the path
    # shows main_menu once); then 2 works
    ok = records[CALLER]
    assert keys_of(ok) == ["7", "2"], ok
    assert path_of(ok) == [*MENU_PATH, "hot_topic"], ok
    assert "hotkey" in outcomes_of(ok), ok
    assert ok["hangup_by"] == "caller", ok

    # 7, 8, 6: two retries (retries: 2), then on_failure no_choice, and the server hangs up
    failed = records[OTHER_CALLER]
    assert keys_of(failed) == ["7", "8", "6"], failed
    assert path_of(failed) == [*MENU_PATH, "no_choice"], failed
    assert "menu_failed" in outcomes_of(failed), failed
    assert failed["hangup_by"] == "frontdesk" and failed["outcome"] == "completed", failed

    m = ivr_server.metric
    assert node_visits(ivr_server, "main_menu") == 2
    assert node_visits(ivr_server, "no_choice") == 1
    assert m("frontdesk_ivr_hotkey_uses_total") == 1
    assert m("frontdesk_dtmf_received_total", source="rtp") == 5
    assert [(t["to_number"], t["reason"]) for t in text_messages(ivr_server)] == [(CALLER, "hotkey")]


# -- 4: screening (R5) -----------------------------------------------------------------------


def test_sales_and_blocklisted_callers_are_screened(ivr_server: Server, sipp: str, tmp_path: Path) -> None:
    sales, blocked = dial_together(
        sipp,
        ivr_server,
        tmp_path,
        {"ivr_sales.xml": ([CALLER], 20), "ivr_blocked.xml": ([BLOCKED, BLOCKED_PATTERN], 20)},
    )
    # each scenario waits for the server's BYE and answers it 200
    assert_succeeded(sales, 1)
    assert_succeeded(blocked, 2)
    records = records_by_caller(ivr_server, 3)

    rec = records[CALLER]
    assert path_of(rec) == [*MENU_PATH, "screened"], rec
    assert keys_of(rec) == ["9"], rec
    assert "screened" in outcomes_of(rec), rec
    assert rec["hangup_by"] == "frontdesk" and rec["outcome"] == "completed", rec
    # the polite goodbye (about 8.7 s) plays out before the BYE
    assert call_seconds(rec) >= 3.0 + 8.0, rec

    for number in (BLOCKED, BLOCKED_PATTERN):
        rec = records[number]
        assert path_of(rec) == ["screened"], rec  # no welcome, no menu
        assert keys_of(rec) == [], rec
        assert outcomes_of(rec) == ["screened:blocklist", "screened"], rec
        assert rec["hangup_by"] == "frontdesk" and rec["outcome"] == "completed", rec
        assert call_seconds(rec) >= 8.0, rec

    m = ivr_server.metric
    assert m("frontdesk_ivr_screened_total") == 3
    assert node_visits(ivr_server, "main_menu") == 1
    assert node_visits(ivr_server, "welcome") == 1
    assert node_visits(ivr_server, "screened") == 3
    assert m("frontdesk_sip_requests_sent_total", method="BYE") == 3
    assert m("frontdesk_sip_responses_received_total", method="BYE", status="200") == 3
    assert m("frontdesk_text_messages_queued_total") == 0
    assert m("frontdesk_calls_active") == 0


# -- 5: leave a message (R14) ----------------------------------------------------------------


def test_leave_a_message_records_the_speech(ivr_server: Server, sipp: str, tmp_path: Path) -> None:
    run = dial(sipp, ivr_server, tmp_path / "sipp", "ivr_message.xml", [CALLER], timeout=30)
    assert_succeeded(run, 1)

    rec = records_by_caller(ivr_server, 1)[CALLER]
    assert path_of(rec) == [*MENU_PATH, "leave_message", "message_saved"], rec
    assert "message_left" in outcomes_of(rec), rec
    assert keys_of(rec)[:1] == ["4"], rec
    assert rec["recording"], rec
    wav_path = Path(str(rec["recording"]))
    assert wav_path.parent == tmp_path / "recordings", wav_path
    assert wav_path.is_file(), wav_path
    assert sorted((tmp_path / "recordings").iterdir()) == [wav_path.with_suffix(".json"), wav_path]
    about = json.loads(wav_path.with_suffix(".json").read_text())  # who left it, beside it
    assert (about["call_id"], about["caller"]) == (rec["call_id"], CALLER), about

    with wave.open(str(wav_path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000), w.getparams()
        seconds = w.getnframes() / w.getframerate()
        samples = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        samples.byteswap()
    # the caller spoke g711a.pcap (7.05 s) after the beep and pressed # 0.35 s after it ended
    assert SPEECH_SECONDS - 0.5 <= seconds <= SPEECH_SECONDS + 1.5, seconds
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    assert rms > 500, rms  # speech, not silence (-40 dBFS is about 330)
    # and it is the speech that was played: the loudness envelopes (30 ms steps) match
    sent = pcap_speech()
    assert abs(len(sent) / 8000 - SPEECH_SECONDS) < 0.1, len(sent)
    corr = best_correlation(envelope(samples), envelope(sent), max_lag=30)
    assert corr > 0.9, corr

    m = ivr_server.metric
    assert m("frontdesk_ivr_messages_recorded_total") == 1
    assert node_visits(ivr_server, "leave_message") == 1
    assert m("frontdesk_rtp_packets_total", direction="in") == 2 * DTMF_PACKETS + SPEECH_PACKETS
    assert_rtp_out(ivr_server, call_seconds(rec))
    # both keys reached the server over RTP: 4, and # that ended the message
    assert m("frontdesk_dtmf_received_total", source="rtp") == 2


# -- 6: complaints (R4), counted monthly by the CLI and the admin API ---------------------------


def test_complaint_is_recorded_and_counted(
    ivr_server: Server, sipp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callers = [CALLER, "4155550101"]
    run = dial(sipp, ivr_server, tmp_path / "sipp", "ivr_complaint.xml", callers, timeout=20)
    assert_succeeded(run, 2)
    records = records_by_caller(ivr_server, 2)
    for number in callers:
        rec = records[number]
        assert rec["complaint"] == "maintenance", rec
        assert path_of(rec) == [*MENU_PATH, "complaint_menu", "complaint_maintenance"], rec
        assert keys_of(rec) == ["5", "3"], rec
        assert "complaint" in outcomes_of(rec), rec
        assert rec["hangup_by"] == "frontdesk", rec
    # months are UTC: the month of the calls, as stored
    month = str(records[CALLER]["invite_at"])[:7]
    year, mon = int(month[:4]), int(month[5:])
    other_month = f"{year - 1}-{mon:02d}"

    cfg = ivr_server.db_path.parent / "frontdesk.yaml"
    # `frontdesk complaints` as a command once, then through its entry point (no interpreter start-up)
    out = subprocess.run(
        [sys.executable, "-m", "ivr.cli", "complaints", "--config", str(cfg), "--month", month],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["maintenance", "2"] in lines and ["total", "2"] in lines, out.stdout

    def cli(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli_main(["complaints", "--config", str(cfg), *args])
        return code, capsys.readouterr().out

    assert cli("--month", month, "--json") == (
        0,
        json.dumps({"month": month, "counts": {"maintenance": 2}, "total": 2}) + "\n",
    )
    code, text = cli("--month", other_month, "--json")
    assert (code, json.loads(text)["counts"]) == (0, {}), text
    with pytest.raises(SystemExit) as exc:
        cli("--month", "2024-13")
    assert exc.value.code == 2

    def admin_get(path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(f"http://127.0.0.1:{ivr_server.http_port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    status, body = admin_get(f"/admin/complaints?month={month}")
    assert status == 200, body
    assert body == {"month": month, "counts": {"maintenance": 2}, "total": 2}, body
    status, body = admin_get(f"/admin/complaints?month={other_month}")
    assert (status, body["counts"]) == (200, {}), body
    status, _ = admin_get(f"/admin/complaints?month={month}", token=None)
    assert status == 401
    status, _ = admin_get(f"/admin/complaints?month={month}", token="x" * len(ADMIN_TOKEN))
    assert status in (401, 403)

    assert node_visits(ivr_server, "complaint_maintenance") == 2
    assert ivr_server.metric("frontdesk_dtmf_received_total", source="rtp") == 4


# -- 7: a key by SIP INFO --------------------------------------------------------------------------


def test_key_by_sip_info_works_like_rtp(ivr_server: Server, sipp: str, tmp_path: Path) -> None:
    run = dial(sipp, ivr_server, tmp_path / "sipp", "ivr_info_key.xml", [CALLER], timeout=15)
    assert_succeeded(run, 1)

    rec = records_by_caller(ivr_server, 1)[CALLER]
    assert path_of(rec) == [*MENU_PATH, "hot_topic"], rec
    assert keys_of(rec) == ["2"], rec
    assert "hotkey" in outcomes_of(rec), rec
    texts = text_messages(ivr_server)
    assert [(t["to_number"], t["reason"], t["body"]) for t in texts] == [(CALLER, "hotkey", demo_text("hot_topic"))]

    m = ivr_server.metric
    assert m("frontdesk_dtmf_received_total", source="info") == 1
    assert m("frontdesk_dtmf_received_total", source="rtp") == 0
    assert m("frontdesk_ivr_hotkey_uses_total") == 1
    assert m("frontdesk_sip_responses_sent_total", method="INFO", status="200") == 1
    assert m("frontdesk_rtp_packets_total", direction="in") == 0

"""The agents' callback API (ivr/web/callbackapi.py, ivr/web/sessions.py) on a real store and SQLite, virtual clock.

The dialer is the only stand-in: a tiny fake that records whom it was asked
to ring (the real one rings SIP phones; the page test and the SIPp tests use
it). Agents log in with their SIP passwords checked against a real Registrar.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.clock import SteppedClock

from callback import db as callback_db
from callback.store import Callback, CallbackStore, RetryPolicy
from ivr.calls.dialer import DialError
from ivr.cli import main as cli_main
from ivr.settings.config import CallbackSettings, ConfigError, parse_config
from ivr.sip.registrar import Credential, Registrar, RegistrarSettings, ha1
from ivr.web.callbackapi import message_file
from ivr.web.routes import CALLBACK_ROUTES, add_routes
from ivr.web.sessions import CALLBACKS, COOKIE, CallbackService, Sessions

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

PASSWORDS = {"8001": "first agent pw", "8002": "second agent pw", "boss": "supervisor pw"}
START = datetime(2024, 5, 17, 9, 0, tzinfo=UTC)


def basic(agent: str, password: str | None = None) -> dict[str, str]:
    given = f"{agent}:{PASSWORDS[agent] if password is None else password}"
    return {"Authorization": "Basic " + base64.b64encode(given.encode()).decode()}


A1, A2, BOSS = basic("8001"), basic("8002"), basic("boss")


@dataclass
class FakeDialer:
    """Records click-to-call requests; fails with ``error`` when set, else starts the attempt as the real one does
    once the agent's phone answers (ivr/calls/dialer.py)."""

    store: CallbackStore | None = None
    clock: Callable[[], datetime] | None = None
    calls: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    async def click_to_call(self, cb: Callback, agent: str) -> None:
        self.calls.append((cb.id, agent))
        if self.error is not None:
            raise DialError(self.error)
        assert self.store is not None and self.clock is not None
        await self.store.start_call(cb.id, agent=agent, now=self.clock())


@dataclass
class Desk:
    client: Client
    store: CallbackStore
    clock: SteppedClock
    dialer: FakeDialer
    texts: list[tuple[str, str, str]]
    recordings: Path
    db_url: str
    service: CallbackService

    async def book(self, number: str, *, ago: float = 300, slot_in: float = 0, **kw: Any) -> Callback:
        now = self.clock()
        return await self.store.book(
            queue=kw.pop("queue", "general"),
            number=number,
            arrived_at=now - timedelta(seconds=ago),
            promised_by=now + timedelta(seconds=slot_in + 3600),
            now=now,
            not_before=now + timedelta(seconds=slot_in) if slot_in else None,
            **kw,
        )

    async def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        r = await self.client.post(path, json=body, headers=headers or {})
        return r.status, await r.json()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        r = await self.client.get(path, headers=headers or {})
        return r.status, await r.json()


SETTINGS = CallbackSettings(supervisors=["boss"], retry={"max_attempts": 3, "delay": 600}, follow_up_delay=86400)


def registrar() -> Registrar:
    creds = {name: Credential(ha1(name, "frontdesk", pw)) for name, pw in PASSWORDS.items()}
    return Registrar(RegistrarSettings(realm="frontdesk"), creds, secrets.token_bytes(32))


@pytest.fixture
async def desk(tmp_path: Path, aiohttp_client: ClientFactory) -> AsyncIterator[Desk]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'frontdesk.db'}"
    engine = callback_db.create_engine(url)
    await callback_db.init_schema(engine)
    store = CallbackStore(engine, RetryPolicy(3, timedelta(seconds=600)), timedelta(seconds=300))
    clock, texts = SteppedClock(START), []
    dialer = FakeDialer(store, clock)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    service = CallbackService(
        store=store,
        settings=SETTINGS,
        dialer=dialer,
        secret=secrets.token_bytes(32),
        recordings_dir=recordings,
        send_text=lambda to, body, reason: texts.append((to, body, reason)),
        clock=clock,
        registrar=registrar(),
        ticks=lambda: clock().timestamp(),  # the login throttle steps with the test's clock
    )
    app = web.Application()
    add_routes(app, CALLBACK_ROUTES)
    app[CALLBACKS] = service
    client = await aiohttp_client(app)
    yield Desk(client, store, clock, dialer, texts, recordings, url, service)
    await engine.dispose()


# -- logging in ---------------------------------------------------------------------------


async def test_login_sets_a_strict_session_cookie_and_token(desk: Desk) -> None:
    status, body = await desk.post("/callbacks/login", {"agent": "8001", "password": "nope"})
    assert status == 401 and body["error"] == "wrong agent name or password"
    assert (await desk.post("/callbacks/login", {"agent": "9999", "password": "x"}))[0] == 401
    assert (await desk.post("/callbacks/login", {"agent": "8001"}))[0] == 400
    r = await desk.client.post("/callbacks/login", data=b"{", headers={"Content-Type": "application/json"})
    assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    assert (await desk.get("/callbacks"))[0] == 401  # no cookie yet
    good = {"agent": "8001", "password": PASSWORDS["8001"]}
    r = await desk.client.post("/callbacks/login", json=good, headers={"Origin": "http://evil.example"})
    assert r.status == 403 and COOKIE not in r.cookies

    r = await desk.client.post("/callbacks/login", json={"agent": "8001", "password": PASSWORDS["8001"]})
    body = await r.json()
    assert r.status == 200 and body["agent"] == "8001" and body["role"] == "agent" and body["token"]
    cookie = r.headers["Set-Cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    # the cookie now authenticates the client; the token does so as a bearer
    assert (await desk.get("/callbacks/me"))[1]["agent"] == "8001"
    bearer = {"Authorization": f"Bearer {body['token']}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bare:  # the token alone
        async with bare.get(desk.client.make_url("/callbacks/me"), headers=bearer) as r:
            assert r.status == 200 and (await r.json())["agent"] == "8001"
        async with bare.get(desk.client.make_url("/callbacks/me")) as r:
            assert r.status == 401

    # a forged or altered token is refused
    forged = body["token"][:-2] + ("AA" if not body["token"].endswith("AA") else "BB")
    assert (await desk.get("/callbacks/me", {"Authorization": f"Bearer {forged}"}))[0] == 401
    # a cookie-borne change from another site is refused (SameSite is the first guard)
    r = await desk.client.post("/callbacks/1/claim", headers={"Origin": "http://evil.example"})
    assert r.status == 403

    # logging out ends the session for the cookie and the token alike
    assert (await desk.post("/callbacks/logout"))[0] == 200
    assert (await desk.get("/callbacks/me", bearer))[0] == 401
    assert (await desk.get("/callbacks/me"))[0] == 401


async def test_sessions_expire_and_supervisors_get_their_role(desk: Desk) -> None:
    status, body = await desk.post("/callbacks/login", {"agent": "boss", "password": PASSWORDS["boss"]})
    assert (status, body["role"]) == (200, "supervisor")
    token = {"Authorization": f"Bearer {body['token']}"}
    assert (await desk.get("/callbacks/me", token))[1]["role"] == "supervisor"
    desk.clock.advance(SETTINGS.session_hours * 3600 + 1)
    assert (await desk.get("/callbacks/me", token))[0] == 401
    # HTTP Basic with the SIP password works as well
    status, body = await desk.get("/callbacks/me", A2)
    assert (status, body["agent"], body["role"]) == (200, "8002", "agent")
    assert [w["name"] for w in body["windows"]] == ["morning", "afternoon"]


async def test_wrong_passwords_lock_the_name_out_for_a_minute(desk: Desk) -> None:
    for _ in range(5):
        assert (await desk.get("/callbacks/me", basic("8001", "guess")))[0] == 401
    r = await desk.client.get("/callbacks/me", headers=A1)  # even the right password, for now
    assert r.status == 429 and "try again in 60 s" in (await r.json())["error"] and r.headers["Retry-After"] == "60"
    assert (await desk.post("/callbacks/login", {"agent": "8001", "password": PASSWORDS["8001"]}))[0] == 429
    assert (await desk.get("/callbacks/me", A2))[0] == 200  # others are not affected
    # a name that does not exist is counted and answered alike: a 429 does not tell who is an agent
    nobody = {"Authorization": "Basic " + base64.b64encode(b"8009:guess").decode()}
    assert [(await desk.get("/callbacks/me", nobody))[0] for _ in range(6)] == [401] * 5 + [429]
    assert (await desk.post("/callbacks/login", {"agent": "8009", "password": "x"}))[0] == 429
    # the real agent from another address is not locked out by the guesser at 127.0.0.1
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as elsewhere:
        async with elsewhere.get(desk.client.make_url("/callbacks/me"), headers=A1) as r:
            assert r.status == 200 and (await r.json())["agent"] == "8001"
    desk.clock.advance(61)
    # the guesser's next block lasts twice as long (growing back-off); the right password then starts afresh
    for _ in range(5):
        assert (await desk.get("/callbacks/me", basic("8001", "guess")))[0] == 401
    r = await desk.client.get("/callbacks/me", headers=A1)
    assert r.status == 429 and r.headers["Retry-After"] == "120"
    desk.clock.advance(121)
    assert (await desk.get("/callbacks/me", A1))[0] == 200
    assert desk.service.registrar is not None
    throttle = desk.service.registrar.throttle
    assert throttle.throttled["basic"] >= 3 and throttle.throttled["login"] == 2 and throttle.failures["basic"] == 15


def test_session_tokens_are_signed_and_revocable() -> None:
    sessions = Sessions(b"k" * 32, timedelta(hours=1))
    token, expires = sessions.issue("8001", START)
    assert expires == START + timedelta(hours=1)
    assert sessions.check(token, START) == "8001"
    assert Sessions(b"x" * 32, timedelta(hours=1)).check(token, START) is None  # another server's secret
    assert sessions.check(token + "x", START) is None and sessions.check("garbage", START) is None
    sessions.revoke(token, START)
    assert sessions.check(token, START) is None
    with pytest.raises(ValueError):
        Sessions(b"short", timedelta(hours=1))


async def test_not_ready_before_the_server_has_started(aiohttp_client: ClientFactory) -> None:
    app = web.Application()
    add_routes(app, CALLBACK_ROUTES)
    client = await aiohttp_client(app)
    r = await client.get("/callbacks", headers=A1)
    assert r.status == 503 and "not running" in (await r.json())["error"]


# -- the list -----------------------------------------------------------------------------


async def test_agents_see_waiting_and_their_own_supervisors_see_all(desk: Desk) -> None:
    first = await desk.book("+4930100", ago=600)
    second = await desk.book("+4930200", ago=300)
    later = await desk.book("+4930300", ago=0, slot_in=3600)  # booked for a later slot
    assert later.state == "booked"
    assert (await desk.post(f"/callbacks/{second.id}/claim", headers=A2))[0] == 200

    status, body = await desk.get("/callbacks", A1)
    assert status == 200 and body["role"] == "agent"
    assert [cb["id"] for cb in body["callbacks"]] == [first.id, later.id]  # not 8002's claimed one
    assert body["callbacks"][0]["has_message"] is False and "message_path" not in body["callbacks"][0]
    status, body = await desk.get("/callbacks", A2)
    assert [cb["id"] for cb in body["callbacks"]] == [second.id, first.id, later.id]  # own claimed first
    status, body = await desk.get("/callbacks?mine=1", A2)
    assert [(cb["id"], cb["claimed_by"]) for cb in body["callbacks"]] == [(second.id, "8002")]
    status, body = await desk.get("/callbacks?state=due", A1)
    assert [cb["id"] for cb in body["callbacks"]] == [first.id]

    status, body = await desk.get("/callbacks", BOSS)
    assert body["role"] == "supervisor"
    assert [(cb["id"], cb["claimed_by"]) for cb in body["callbacks"]] == [
        (first.id, None),
        (second.id, "8002"),
        (later.id, None),
    ]
    status, body = await desk.get("/callbacks?agent=8002", BOSS)
    assert [cb["id"] for cb in body["callbacks"]] == [second.id]

    assert (await desk.get("/callbacks?state=completed", A1))[0] == 403
    assert (await desk.get("/callbacks?agent=8002", A1))[0] == 403
    status, body = await desk.get("/callbacks?state=dueish", BOSS)
    assert status == 400 and "unknown state" in body["error"]
    assert (await desk.get("/callbacks?limit=0", BOSS))[0] == 400


async def test_a_callback_handed_over_while_the_page_is_read_is_listed_once(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's page is one read: a claim or a release landing during it never hides a callback or lists it twice."""
    cb = await desk.book("+4930100")
    select = desk.store._select
    moves = [lambda: desk.store.claim(cb.id, agent="8001", now=desk.clock())]

    async def racing_select(*args: Any, **kw: Any) -> list[Callback]:
        found = await select(*args, **kw)
        while moves:  # the dispatcher moves the callback right after a read of the page's
            await moves.pop()()
        return found

    monkeypatch.setattr(desk.store, "_select", racing_select)
    status, body = await desk.get("/callbacks", A1)  # due -> offered to 8001 during the read
    assert status == 200 and [(c["id"], c["state"]) for c in body["callbacks"]] == [(cb.id, "due")]
    status, body = await desk.get("/callbacks", A1)
    assert [(c["id"], c["state"]) for c in body["callbacks"]] == [(cb.id, "offered")]
    moves.append(lambda: desk.store.release(cb.id, agent="8001", now=desk.clock()))
    status, body = await desk.get("/callbacks", A1)  # offered -> due during the read
    assert [(c["id"], c["state"]) for c in body["callbacks"]] == [(cb.id, "offered")]
    status, body = await desk.get("/callbacks", A1)
    assert [(c["id"], c["state"]) for c in body["callbacks"]] == [(cb.id, "due")]


# -- claims ------------------------------------------------------------------------------


async def test_two_agents_never_hold_one_callback(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    status, body = await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    assert status == 200 and body["callback"]["state"] == "offered" and body["callback"]["claimed_by"] == "8001"
    held = await desk.store.get(cb.id)
    assert held.lease_until == START + timedelta(seconds=300)

    status, body = await desk.post(f"/callbacks/{cb.id}/claim", headers=A2)
    assert status == 409 and "claimed by 8001" in body["error"]
    for action, payload in (("release", None), ("outcome", {"outcome": "completed"}), ("notes", {"notes": "x"})):
        status, body = await desk.post(f"/callbacks/{cb.id}/{action}", payload, A2)
        assert status == 403 and "claimed by 8001" in body["error"], action
    status, body = await desk.post(f"/callbacks/{cb.id}/call", {}, A2)
    assert status == 403
    assert await desk.store.get(cb.id) == held  # nothing changed, not even the version
    assert desk.dialer.calls == []

    # at the same moment: exactly one of many wins
    other = await desk.book("+4930200")
    results = await asyncio.gather(*(desk.post(f"/callbacks/{other.id}/claim", headers=h) for h in (A1, A2, BOSS)))
    assert sorted(status for status, _ in results) == [200, 409, 409]

    # a lapsed lease frees the callback for the next agent
    desk.clock.advance(301)
    status, body = await desk.post(f"/callbacks/{cb.id}/claim", headers=A2)
    assert (status, body["callback"]["claimed_by"]) == (200, "8002")
    assert (await desk.post("/callbacks/999/claim", headers=A1))[0] == 404
    later = await desk.book("+4930300", slot_in=3600)
    status, body = await desk.post(f"/callbacks/{later.id}/claim", headers=A1)
    assert status == 409 and "not due before its slot" in body["error"]


async def test_release_puts_it_back_for_anyone(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    assert (await desk.post(f"/callbacks/{cb.id}/release", headers=A1))[0] == 409  # not claimed
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    status, body = await desk.post(f"/callbacks/{cb.id}/release", headers=A1)
    assert (status, body["callback"]["state"], body["callback"]["claimed_by"]) == (200, "due", None)
    assert (await desk.post(f"/callbacks/{cb.id}/claim", headers=A2))[0] == 200


# -- calling and outcomes -------------------------------------------------------------------


async def test_click_to_call_needs_the_claim(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    status, body = await desk.post(f"/callbacks/{cb.id}/call", headers=A1)
    assert status == 409 and "claim callback" in body["error"]
    assert desk.dialer.calls == [] and (await desk.store.get(cb.id)).state == "due"

    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    status, body = await desk.post(f"/callbacks/{cb.id}/call", headers=A1)
    assert status == 200 and body["calling"] is True
    assert body["callback"]["state"] == "in_progress" and body["callback"]["attempts"] == 1
    assert desk.dialer.calls == [(cb.id, "8001")]
    status, body = await desk.post(f"/callbacks/{cb.id}/call", headers=A1)
    assert status == 409 and "already under way" in body["error"]

    # the dialer's refusal reaches the agent as a 502 with its reason
    other = await desk.book("+4930200")
    await desk.post(f"/callbacks/{other.id}/claim", headers=A2)
    desk.dialer.error = "your phone is not registered"
    status, body = await desk.post(f"/callbacks/{other.id}/call", headers=A2)
    assert status == 502 and body["error"] == "your phone is not registered"
    assert body["callback"]["id"] == other.id
    # a supervisor cannot ring their own phone for someone else's claim
    assert (await desk.post(f"/callbacks/{cb.id}/call", headers=BOSS))[0] == 403


async def test_no_answer_is_retried_then_fails_with_a_text(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    for attempt in (1, 2):
        await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
        await desk.post(f"/callbacks/{cb.id}/call", headers=A1)
        status, body = await desk.post(f"/callbacks/{cb.id}/outcome", {"outcome": "no_answer"}, A1)
        got = body["callback"]
        assert (status, got["state"], got["attempts"], got["claimed_by"]) == (200, "due", attempt, None)
        assert got["next_attempt_at"] == (desk.clock.now + timedelta(seconds=600)).isoformat()
        desk.clock.advance(600)
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    await desk.post(f"/callbacks/{cb.id}/call", headers=A1)
    status, body = await desk.post(f"/callbacks/{cb.id}/outcome", {"outcome": "busy", "notes": "engaged"}, A1)
    got = body["callback"]
    assert (got["state"], got["close_reason"], got["attempts"]) == ("failed", "retries_exhausted", 3)
    assert "engaged" in got["notes"]
    assert [(to, reason) for to, _, reason in desk.texts] == [("+4930100", "callback")]
    assert "self-service" in desk.texts[0][1]


async def test_outcome_input_is_checked(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    for payload, name, words in (
        ({"outcome": "great"}, "outcome", "'completed', 'no_answer', 'busy' or 'failed'"),
        ({"outcome": "completed", "follow_up": "yes"}, "follow_up", "valid boolean"),
        ({"outcome": "no_answer", "follow_up": True}, "follow_up", "only for a completed case"),
        ({"outcome": "completed", "notes": 5}, "notes", "valid string"),
        ({"outcome": "completed", "notes": "x" * 4001}, "notes", "4000 characters"),
        ({"outcome": "completed", "colour": "red"}, "colour", "unknown field"),
        ([1], "body", "JSON object"),
    ):
        status, body = await desk.post(f"/callbacks/{cb.id}/outcome", payload, A1)
        assert status == 400 and words in body["error"], payload
        assert [(d["field"], words in d["message"]) for d in body["detail"]] == [(name, True)], body
    assert (await desk.store.get(cb.id)).state == "offered"


async def test_completed_case_books_a_follow_up_whose_result_is_recorded(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    await desk.post(f"/callbacks/{cb.id}/call", headers=A1)
    status, body = await desk.post(
        f"/callbacks/{cb.id}/outcome", {"outcome": "completed", "notes": "fixed the bill", "follow_up": True}, A1
    )
    assert status == 200 and body["callback"]["state"] == "completed" and body["callback"]["outcome"] == "completed"
    follow = body["follow_up"]
    assert (follow["kind"], follow["parent_id"], follow["state"], follow["created_by"]) == (
        "follow_up",
        cb.id,
        "booked",
        "8001",
    )
    assert follow["not_before"] == (START + timedelta(days=1)).isoformat()
    assert desk.texts == []

    # a day later it is due; its result is the outcome recorded on it
    desk.clock.advance(86400)
    await desk.store.promote_due(desk.clock.now)
    status, body = await desk.post(f"/callbacks/{follow['id']}/claim", headers=A2)
    assert (status, body["callback"]["state"]) == (200, "offered")
    status, body = await desk.post(
        f"/callbacks/{follow['id']}/outcome", {"outcome": "completed", "follow_up": True}, A2
    )
    assert status == 400 and "already the follow-up" in body["error"]
    status, body = await desk.post(
        f"/callbacks/{follow['id']}/outcome", {"outcome": "completed", "notes": "happy with the fix"}, A2
    )
    got = body["callback"]
    assert (got["state"], got["outcome"]) == ("completed", "completed") and "happy with the fix" in got["notes"]
    assert "follow_up" not in body

    # the caller books a callback again just before the follow-up would be: said, the outcome stays recorded
    again = await desk.book("+4930200")
    await desk.post(f"/callbacks/{again.id}/claim", headers=A1)
    real_book = desk.store.book

    async def caller_books_first(**kw: Any) -> Callback:
        await real_book(**{**kw, "kind": "callback", "parent_id": None, "not_before": None, "created_by": "ivr"})
        return await real_book(**kw)

    desk.store.book = caller_books_first  # type: ignore[method-assign]
    status, body = await desk.post(f"/callbacks/{again.id}/outcome", {"outcome": "completed", "follow_up": True}, A1)
    assert status == 200 and body["callback"]["state"] == "completed" and body["follow_up"] is None
    assert "already has callback" in body["follow_up_problem"]


async def test_reschedule_and_give_up(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    when = START + timedelta(hours=5)
    for payload, name, words in (
        ({}, "not_before", "Field required"),
        ({"not_before": "tomorrow"}, "not_before", "valid datetime"),
        ({"not_before": "2024-05-17T14:00:00"}, "not_before", "timezone"),
        ({"not_before": "2024-05-16T14:00:00Z"}, "not_before", "in the past"),
        ({"not_before": when.isoformat(), "window_end": when.isoformat()}, "window_end", "window_end must be after"),
    ):
        status, body = await desk.post(f"/callbacks/{cb.id}/reschedule", payload, A1)
        assert status == 400 and words in body["error"], payload
        assert [d["field"] for d in body["detail"]] == [name], body
    end = when + timedelta(hours=2)
    status, body = await desk.post(
        f"/callbacks/{cb.id}/reschedule", {"not_before": "2024-05-17T14:00:00Z", "window_end": end.isoformat()}, A1
    )
    got = body["callback"]
    assert (status, got["state"], got["claimed_by"]) == (200, "booked", None)
    assert (got["not_before"], got["window_end"], got["promised_by"]) == (
        when.isoformat(),
        end.isoformat(),
        end.isoformat(),
    )
    # rescheduled: no longer the agent's to act on
    assert (await desk.post(f"/callbacks/{cb.id}/give-up", {}, A1))[0] == 409

    other = await desk.book("+4930200")
    await desk.post(f"/callbacks/{other.id}/claim", headers=A2)
    status, body = await desk.post(f"/callbacks/{other.id}/give-up", {"notes": "number not in service"}, A2)
    got = body["callback"]
    assert (status, got["state"], got["close_reason"]) == (200, "failed", "gave_up")
    assert "number not in service" in got["notes"]
    assert [to for to, _, _ in desk.texts] == ["+4930200"]


async def test_notes_are_kept_with_who_wrote_them(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    status, body = await desk.post(f"/callbacks/{cb.id}/notes", {"notes": "x"}, A1)
    assert status == 409 and "claim callback" in body["error"]
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    assert (await desk.post(f"/callbacks/{cb.id}/notes", {"notes": "  "}, A1))[0] == 400
    status, body = await desk.post(f"/callbacks/{cb.id}/notes", {"notes": "wants the billing team"}, A1)
    assert status == 200 and body["callback"]["notes"].endswith("8001] wants the billing team")
    status, body = await desk.post(f"/callbacks/{cb.id}/notes", {"notes": "checked the account"}, BOSS)
    assert status == 200 and "(supervisor boss) checked the account" in body["callback"]["notes"]


# -- supervisors --------------------------------------------------------------------------


async def test_only_supervisors_reassign(desk: Desk) -> None:
    cb = await desk.book("+4930100")
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    status, body = await desk.post(f"/callbacks/{cb.id}/reassign", {"agent": "8002"}, A1)
    assert status == 403 and "only supervisors" in body["error"]
    status, body = await desk.post(f"/callbacks/{cb.id}/reassign", {"agent": "nobody"}, BOSS)
    assert status == 400 and "no agent 'nobody'" in body["error"]
    assert (await desk.store.get(cb.id)).claimed_by == "8001"

    status, body = await desk.post(f"/callbacks/{cb.id}/reassign", {"agent": "8002"}, BOSS)
    assert (status, body["callback"]["claimed_by"], body["callback"]["state"]) == (200, "8002", "offered")
    assert (await desk.post(f"/callbacks/{cb.id}/outcome", {"outcome": "completed"}, A1))[0] == 403
    # a supervisor may act for the claimer, and it is written down
    status, body = await desk.post(f"/callbacks/{cb.id}/outcome", {"outcome": "failed"}, BOSS)
    assert (status, body["callback"]["state"]) == (200, "failed")
    assert "(recorded by supervisor boss)" in body["callback"]["notes"]

    # a due one can be handed straight to an agent
    due = await desk.book("+4930200")
    status, body = await desk.post(f"/callbacks/{due.id}/reassign", {"agent": "8001"}, BOSS)
    assert (status, body["callback"]["state"], body["callback"]["claimed_by"]) == (200, "offered", "8001")
    done = await desk.book("+4930300")
    await desk.store.cancel(done.id, now=desk.clock.now, by="caller")
    status, body = await desk.post(f"/callbacks/{done.id}/reassign", {"agent": "8001"}, BOSS)
    assert status == 409 and "cancelled" in body["error"]


def write_wav(path: Path, frames: int = 800) -> bytes:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * frames)
    return path.read_bytes()


async def test_message_only_for_the_claimer_or_a_supervisor_and_only_from_recordings(desk: Desk) -> None:
    wav = write_wav(desk.recordings / "msg-1.wav")
    cb = await desk.book("+4930100", message_path=str(desk.recordings / "msg-1.wav"))
    status, body = await desk.get(f"/callbacks/{cb.id}/message", A1)
    assert status == 409  # claim it first
    await desk.post(f"/callbacks/{cb.id}/claim", headers=A1)
    r = await desk.client.get(f"/callbacks/{cb.id}/message", headers=A1)
    assert r.status == 200 and r.headers["Content-Type"] == "audio/wav" and await r.read() == wav
    assert (await desk.get(f"/callbacks/{cb.id}/message", A2))[0] == 403
    r = await desk.client.get(f"/callbacks/{cb.id}/message", headers=BOSS)
    assert r.status == 200 and await r.read() == wav
    status, body = await desk.get("/callbacks?mine=1", A1)
    assert body["callbacks"][0]["has_message"] is True

    # paths outside the recordings folder are never served, whatever the database says
    outside = desk.recordings.parent / "secret.wav"
    write_wav(outside)
    (desk.recordings / "link.wav").symlink_to(outside)
    for i, path in enumerate(
        (str(outside), "../secret.wav", str(desk.recordings / ".." / "secret.wav"), "link.wav", "missing.wav")
    ):
        bad = await desk.book(f"+49302{i:02d}", message_path=path)
        await desk.post(f"/callbacks/{bad.id}/claim", headers=A1)
        status, body = await desk.get(f"/callbacks/{bad.id}/message", A1)
        assert status == 404 and "no recorded message" in body["error"], path
    none = await desk.book("+4930999")
    assert (await desk.get(f"/callbacks/{none.id}/message", BOSS))[0] == 404
    # a bare file name is looked up inside the folder
    assert message_file(desk.recordings, "msg-1.wav") == (desk.recordings / "msg-1.wav").resolve()
    assert message_file(desk.recordings, "/etc/passwd") is None


# -- shift handover (R19) -------------------------------------------------------------------


async def test_handover_report_and_cli(desk: Desk, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = await desk.book("+4930100", ago=900)
    second = await desk.book("+4930200", ago=600, queue="billing")
    closed = await desk.book("+4930300")
    await desk.post(f"/callbacks/{second.id}/claim", headers=A2)
    await desk.post(f"/callbacks/{closed.id}/claim", headers=A1)
    await desk.post(f"/callbacks/{closed.id}/outcome", {"outcome": "completed"}, A1)
    desk.clock.advance(7200)  # past every promise (an hour)

    assert (await desk.get("/callbacks/handover", A1))[0] == 403
    status, report = await desk.get("/callbacks/handover", BOSS)
    assert status == 200
    assert report["open"] == 2 and report["promises_missed"] == 2
    assert report["claimed_by_agent"] == {"8002": 1}
    assert report["counts_by_state"]["completed"] == 1 and report["counts_by_state"]["due"] == 1
    rows = {row["id"]: row for row in report["callbacks"]}
    assert set(rows) == {first.id, second.id}
    assert rows[second.id]["claimed_by"] == "8002" and rows[second.id]["state"] == "offered"
    assert rows[second.id]["lease_until"] == (START + timedelta(seconds=300)).isoformat()
    for key in ("state", "number", "queue", "promised_by", "claimed_by", "lease_until", "attempts"):
        assert key in rows[first.id]

    # the CLI reads the same database directly
    cfg = tmp_path / "frontdesk.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"url": desk.db_url}}))
    assert await asyncio.to_thread(cli_main, ["handover", "--config", str(cfg), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in printed["callbacks"]] == [row["id"] for row in report["callbacks"]]
    assert printed["claimed_by_agent"] == {"8002": 1}
    assert await asyncio.to_thread(cli_main, ["handover", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "2 open callback(s)" in text and "8002 holds 1" in text and "+4930200" in text

    missing = tmp_path / "none.yaml"
    missing.write_text(yaml.safe_dump({"storage": {"url": f"sqlite+aiosqlite:///{tmp_path / 'nope.db'}"}}))
    assert await asyncio.to_thread(cli_main, ["handover", "--config", str(missing)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


# -- the page and the config -------------------------------------------------------------------


async def test_page_is_served_with_a_strict_policy(desk: Desk) -> None:
    r = await desk.client.get("/agent/callbacks")
    html = await r.text()
    assert r.status == 200 and r.content_type == "text/html"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert '<label for="login-agent">' in html and 'src="/agent/callbacks.js"' in html
    for path, kind in (("/agent/callbacks.js", "text/javascript"), ("/agent/callbacks.css", "text/css")):
        r = await desk.client.get(path)
        assert r.status == 200 and r.content_type == kind and len(await r.read()) > 100


def test_callbacks_config_is_checked() -> None:
    ha1_hex = "0" * 32
    config = parse_config(
        f"""
agents: {{'8001': {{ha1: '{ha1_hex}'}}, boss: {{ha1: '{ha1_hex}'}}}}
callbacks:
  supervisors: [boss]
  lease_seconds: 120
  retry: {{max_attempts: 5, delay: 300}}
  windows:
    - {{name: morning, start: "08:00", end: "11:00"}}
    - {{name: afternoon, start: "14:00", end: "16:30"}}
    - {{name: evening, start: "18:00", end: "20:00"}}
  trunk: "sip:{{number}}@gw.example:5060"
"""
    )
    cb = config.callbacks
    assert cb.supervisors == ["boss"] and cb.lease_seconds == 120 and cb.retry.max_attempts == 5
    assert [(w.name, w.start, w.end) for w in cb.windows][2] == ("evening", 18 * 60, 20 * 60)
    for text, words in (
        ("callbacks: {supervisors: [boss]}", "callbacks.supervisors.0: unknown agent 'boss'"),
        ("callbacks: {trunk: 'sip:gw.example'}", "callbacks.trunk: the trunk must contain {number}"),
        ("callbacks: {trunk: 'sip:{number}@{host}'}", "only {number}"),
        ("callbacks: {trunk: 'http://{number}@x'}", "not a SIP URI"),
        ("callbacks: {lease_seconds: 0}", "callbacks.lease_seconds"),
        ("callbacks: {retry: {max_attempts: 0}}", "callbacks.retry.max_attempts"),
        ("callbacks: {windows: [{name: a, start: '12:00', end: '11:00'}]}", "end must be after start"),
        ("callbacks: {windows: [{name: asap, start: '09:00', end: '11:00'}]}", "as-soon-as-possible"),
        ("callbacks: {colour: red}", "callbacks.colour: unknown setting"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert words in str(err.value), text


def test_callbacks_config_defaults() -> None:
    cb = parse_config("").callbacks
    assert cb.supervisors == [] and cb.lease_seconds == 300
    assert (cb.retry.max_attempts, cb.retry.delay) == (3, 600)
    assert (cb.max_age, cb.follow_up_delay) == (86400, 86400)
    assert [(w.name, w.start, w.end) for w in cb.windows] == [("morning", 540, 720), ("afternoon", 780, 1020)]
    assert cb.trunk == "sip:{number}@127.0.0.1:5070"
    assert (cb.reserve_agents, cb.dispatch_interval, cb.promise_margin, cb.session_hours) == (1, 2.0, 300, 12)


async def test_an_agent_books_a_callback_for_a_complex_enquiry(desk: Desk) -> None:
    later = (desk.clock() + timedelta(hours=2)).isoformat()
    status, body = await desk.post(
        "/callbacks",
        headers=A1,
        body={"number": "+4930777", "queue": "general", "not_before": later, "notes": "tariff"},
    )
    assert status == 201, body
    cb = body["callback"]
    assert (cb["number"], cb["state"], cb["created_by"]) == ("+4930777", "booked", "8001")
    assert "tariff" in cb["notes"]
    # one active per number and queue, as from the IVR
    status, body = await desk.post("/callbacks", headers=A2, body={"number": "+4930777", "queue": "general"})
    assert status == 409 and "already has callback" in body["error"]
    for bad in (
        {"number": "call me", "queue": "general"},
        {"number": "+4930778"},
        {"number": "+4930778", "queue": "general", "x": 1},
    ):
        assert (await desk.post("/callbacks", headers=A1, body=bad))[0] == 400, bad
    past = (desk.clock() - timedelta(hours=1)).isoformat()
    status, body = await desk.post(
        "/callbacks", headers=A1, body={"number": "+4930779", "queue": "general", "not_before": past}
    )
    assert status == 400 and "in the past" in body["error"]

"""Targeted notices (R6) and the admin API: auth, publish/withdraw, audit, persistence, complaints (R4)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from ivr.settings.builtin_prompts import BUILTIN_PROMPTS
from ivr.settings.config import AdminSettings, ConfigError, parse_config
from ivr.storage.audit import read_audit
from ivr.storage.notices import NoticeBoard, NoticeError
from ivr.storage.records import CallRecord, CallRecorder, CallSummary, complaint_counts, create_engine, init_schema
from ivr.web.admin import ADMIN, AdminState
from ivr.web.routes import ADMIN_ROUTES, add_routes

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPTS = {"outage_north", "outage_south", "billing_delay", "welcome"}
GROUPS = {"north", "south", "vip"}
CONFIGURED = {
    "north-outage": ("north", "outage_north", True),
    "south-outage": ("south", "outage_south", False),
}

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'frontdesk.db'}")
    await init_schema(eng)
    yield eng
    await eng.dispose()


async def new_board(engine: AsyncEngine, prompts: set[str] = PROMPTS) -> NoticeBoard:
    board = NoticeBoard(engine, CONFIGURED, prompts=prompts, groups=GROUPS)
    await board.load()
    return board


def admin_app(settings: AdminSettings, state: AdminState | None) -> web.Application:
    app = web.Application()
    add_routes(app, ADMIN_ROUTES, admin_token=settings.token.get_secret_value() if settings.token else None)
    if state is not None:
        app[ADMIN] = state
    return app


@pytest.fixture
async def board(engine: AsyncEngine) -> NoticeBoard:
    return await new_board(engine)


@pytest.fixture
async def client(engine: AsyncEngine, board: NoticeBoard, aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(admin_app(AdminSettings(token=SecretStr(TOKEN)), AdminState(engine, board)))


async def put(client: Client, notice_id: str, body: Any, headers: dict[str, str] = AUTH) -> tuple[int, Any]:
    resp = await client.put(f"/admin/notices/{notice_id}", json=body, headers=headers)
    return resp.status, await resp.json()


# -- NoticeBoard --------------------------------------------------------------------


async def test_active_for_plays_each_groups_notices_in_config_order(engine: AsyncEngine) -> None:
    board = NoticeBoard(
        engine,
        {
            "b-north": ("north", "outage_north", True),
            "a-vip": ("vip", "welcome", True),
            "c-north-billing": ("north", "billing_delay", True),
            "d-south": ("south", "outage_south", False),
            "e-vip-dup": ("vip", "outage_north", True),
        },
        prompts=PROMPTS,
        groups=GROUPS,
    )
    await board.load()
    assert board.active_for(frozenset()) == ()
    assert board.active_for(frozenset({"south"})) == ()  # inactive
    assert board.active_for(frozenset({"unknown"})) == ()
    assert board.active_for(frozenset({"north"})) == ("outage_north", "billing_delay")
    # a caller in two groups hears each prompt once, in config order
    both = frozenset({"north", "vip"})
    assert board.active_for(both) == ("outage_north", "welcome", "billing_delay")
    assert [n.id for n in board.active_notices_for(both)] == ["b-north", "a-vip", "c-north-billing", "e-vip-dup"]
    assert board.active_for(both) is board.active_for(both)  # cached

    await board.withdraw("a-vip")
    assert board.active_for(both) == ("outage_north", "billing_delay")  # cache dropped on change
    await board.publish("d-south")
    assert board.active_for(frozenset({"south", "north"})) == ("outage_north", "billing_delay", "outage_south")


async def test_notices_added_at_runtime_play_after_the_configured_ones_in_publish_order(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    board = await new_board(engine)
    await board.publish("zz-first", "north", "billing_delay")
    await board.publish("aa-second", "north", "welcome")
    await board.publish("zz-first", "north", "billing_delay")  # a change keeps its place
    expected = ("outage_north", "billing_delay", "welcome")
    assert board.active_for(frozenset({"north"})) == expected
    again = await new_board(engine)
    assert again.active_for(frozenset({"north"})) == expected
    assert [n.id for n in again.notices()] == ["north-outage", "south-outage", "zz-first", "aa-second"]


async def test_board_from_the_ivr_config_section(engine: AsyncEngine) -> None:
    cfg = parse_config(
        "ivr:\n"
        "  prompts:\n    storm: {text: Storm damage in your area.}\n"
        "  groups:\n    coast: {prefixes: ['+4420']}\n"
        "  notices:\n"
        "    storm: {group: coast, prompt: storm}\n"
        "    storm-later: {group: coast, prompt: storm, active: false}\n",
        "cfg.yaml",
    )
    board = NoticeBoard.from_settings(engine, cfg.ivr)
    await board.load()
    coast = frozenset({"coast"})
    assert board.active_for(coast) == ("storm",)
    # the demo's notices are merged in ahead of the file's: config order
    assert list(cfg.ivr.notices) == ["network_fault", "storm", "storm-later"]
    assert board.active_for(frozenset(cfg.ivr.groups)) == ("fault_notice", "storm")
    builtin = next(iter(BUILTIN_PROMPTS))
    await board.publish("builtin", "coast", builtin)  # built-in prompts are known too
    assert board.active_for(coast) == ("storm", builtin)


def test_a_bad_configured_notice_is_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(NoticeError, match="notice 'n': unknown prompt 'nope'"):
        NoticeBoard(engine, {"n": ("north", "nope", True)}, prompts=PROMPTS, groups=GROUPS)
    with pytest.raises(NoticeError, match="unknown group 'west' \\(known: north, south, vip\\)"):
        NoticeBoard(engine, {"n": ("west", "welcome", True)}, prompts=PROMPTS, groups=GROUPS)


async def test_runtime_changes_survive_a_restart(engine: AsyncEngine, tmp_path: Path) -> None:
    board = await new_board(engine)
    await board.withdraw("north-outage")  # configured active, withdrawn at runtime
    await board.publish("south-outage")  # configured inactive, published
    await board.publish("vip-billing", "vip", "billing_delay", actor="ops")

    # a new process: another engine on the same SQLite file, the same config
    other = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'frontdesk.db'}")
    try:
        again = await new_board(other)
    finally:
        await other.dispose()
    assert [(n.id, n.group, n.prompt, n.active, n.source) for n in again.notices()] == [
        ("north-outage", "north", "outage_north", False, "admin"),
        ("south-outage", "south", "outage_south", True, "admin"),
        ("vip-billing", "vip", "billing_delay", True, "admin"),
    ]
    vip = again.get("vip-billing")
    assert vip is not None and vip.updated_by == "ops" and vip.updated_at is not None
    assert vip.updated_at.tzinfo is not None
    assert again.active_for(frozenset({"north", "south", "vip"})) == ("outage_south", "billing_delay")


async def test_a_stored_notice_whose_prompt_left_the_config_is_not_played(engine: AsyncEngine) -> None:
    board = await new_board(engine)
    await board.publish("vip-billing", "vip", "billing_delay")
    again = await new_board(engine, prompts=PROMPTS - {"billing_delay"})
    assert again.active_for(frozenset({"vip"})) == ()
    assert "unknown prompt 'billing_delay'" in (again.problem("vip-billing") or "")
    await again.withdraw("vip-billing")  # can still be withdrawn


# -- admin API: auth ----------------------------------------------------------------


async def test_no_token_configured_means_the_admin_api_is_off(
    engine: AsyncEngine, board: NoticeBoard, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(admin_app(AdminSettings(), AdminState(engine, board)))
    resp = await client.get("/admin/notices", headers=AUTH)
    assert resp.status == 503
    assert "set admin.token" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": f"bearer {TOKEN}"}, 200),
    ],
)
async def test_token_auth(client: Client, headers: dict[str, str], status: int) -> None:
    for method, path in [("GET", "/admin/notices"), ("DELETE", "/admin/notices/north-outage"), ("GET", "/admin/audit")]:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == status, (method, path)
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in (await resp.json())["error"]
        if status == 403:
            assert (await resp.json()) == {
                "error": "wrong admin token",
                "detail": [{"field": "Authorization", "message": "this is not the admin token"}],
            }


async def test_refused_requests_change_nothing(client: Client, board: NoticeBoard, engine: AsyncEngine) -> None:
    status, _ = await put(client, "north-outage", {"active": False}, headers={"Authorization": "Bearer nope"})
    assert status == 403
    assert board.active_for(frozenset({"north"})) == ("outage_north",)
    assert await read_audit(engine) == []


async def test_not_ready_before_the_server_has_started(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(admin_app(AdminSettings(token=SecretStr(TOKEN)), None))
    resp = await client.get("/admin/notices", headers=AUTH)
    assert resp.status == 503 and "not ready" in (await resp.json())["error"]


# -- admin API: notices and audit --------------------------------------------------------


async def test_publish_list_withdraw_and_audit(client: Client, board: NoticeBoard, engine: AsyncEngine) -> None:
    resp = await client.get("/admin/notices", headers=AUTH)
    assert resp.status == 200
    listed = (await resp.json())["notices"]
    assert [(n["id"], n["active"], n["source"]) for n in listed] == [
        ("north-outage", True, "config"),
        ("south-outage", False, "config"),
    ]

    status, body = await put(client, "vip-billing", {"group": "vip", "prompt": "billing_delay", "active": True})
    assert status == 200
    assert body["id"] == "vip-billing" and body["active"] is True and body["updated_by"] == "admin"
    assert board.active_for(frozenset({"vip"})) == ("billing_delay",)

    status, body = await put(client, "south-outage", {"active": True})  # publish a prepared notice
    assert status == 200 and (body["group"], body["prompt"], body["active"]) == ("south", "outage_south", True)
    assert board.active_for(frozenset({"south"})) == ("outage_south",)

    resp = await client.delete("/admin/notices/vip-billing", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["active"] is False
    assert board.active_for(frozenset({"vip"})) == ()

    resp = await client.get("/admin/notices", headers=AUTH)
    ids = {n["id"]: n["active"] for n in (await resp.json())["notices"]}
    assert ids == {"north-outage": True, "south-outage": True, "vip-billing": False}

    resp = await client.get("/admin/audit", headers=AUTH)
    entries = (await resp.json())["entries"]
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("admin", "notice.withdraw", "notice:vip-billing"),
        ("admin", "notice.publish", "notice:south-outage"),
        ("admin", "notice.publish", "notice:vip-billing"),
    ]
    assert entries[2]["detail"] == {
        "before": None,
        "after": {"group": "vip", "prompt": "billing_delay", "active": True},
    }
    assert entries[1]["detail"]["before"] == {"group": "south", "prompt": "outage_south", "active": False}
    assert datetime.fromisoformat(entries[0]["at"]).tzinfo is not None

    resp = await client.get("/admin/audit", params={"limit": "1", "before": str(entries[0]["id"])}, headers=AUTH)
    assert [e["id"] for e in (await resp.json())["entries"]] == [entries[1]["id"]]


@pytest.mark.parametrize(
    ("notice_id", "body", "field", "message"),
    [
        ("n1", {"group": "west", "prompt": "welcome"}, "group", "unknown group 'west' (known: north, south, vip)"),
        ("n1", {"group": "vip", "prompt": "nope"}, "prompt", "unknown prompt 'nope' (known: billing_delay, outage_n"),
        ("n1", {"prompt": "welcome"}, "body", "notice 'n1' is new: give both group and prompt"),
        ("n1", {"group": "vip", "prompt": "welcome", "active": "yes"}, "active", "Input should be a valid boolean"),
        ("n1", {"group": 3, "prompt": "welcome"}, "group", "Input should be a valid string"),
        ("n1", {"group": "vip", "prompt": "welcome", "colour": "red"}, "colour", "unknown field; expected group"),
        ("n1", ["vip", "welcome"], "body", "must be a JSON object"),
        ("bad id!", {"group": "vip", "prompt": "welcome"}, "id", "bad notice id 'bad id!'"),
    ],
)
async def test_publish_validation_errors(
    client: Client, engine: AsyncEngine, notice_id: str, body: Any, field: str, message: str
) -> None:
    status, answer = await put(client, notice_id, body)
    assert status == 400
    assert [d["field"] for d in answer["detail"]] == [field], answer
    assert answer["detail"][0]["message"].startswith(message), answer
    assert await read_audit(engine) == []


async def test_bad_json_and_unknown_notice(client: Client) -> None:
    as_json = {**AUTH, "Content-Type": "application/json"}
    resp = await client.put("/admin/notices/n1", data=b"{group: vip", headers=as_json)
    assert resp.status == 400 and (await resp.json())["error"].startswith("not valid JSON")
    resp = await client.put("/admin/notices/n1", data=b"\xff\xfe", headers=as_json)
    assert resp.status == 400 and (await resp.json())["detail"][0]["field"] == "body"
    resp = await client.put("/admin/notices/n1", data=b"{}", headers=AUTH)  # not said to be JSON
    assert resp.status == 415 and (await resp.json())["detail"][0]["field"] == "Content-Type"
    resp = await client.delete("/admin/notices/nope", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json()) == {
        "error": "no notice 'nope'",
        "detail": [{"field": "id", "message": "no such notice"}],
    }
    for query in ({"limit": "0"}, {"limit": "many"}, {"before": "-1"}):
        resp = await client.get("/admin/audit", params=query, headers=AUTH)
        assert resp.status == 400
        assert [d["field"] for d in (await resp.json())["detail"]] == list(query)


# -- complaints (R4) ------------------------------------------------------------------


def _summary(n: int, at: datetime, complaint: str | None, **extra: str) -> CallSummary:
    t = at.timestamp()
    return CallSummary(
        f"call-{n}", "+15550100", "100", t, t + 1, t + 60, "completed", "caller", None, "udp", complaint, **extra
    )


async def _record_complaints(engine: AsyncEngine) -> None:
    recorder = CallRecorder(engine)
    calls = [
        (datetime(2024, 4, 30, 23, 59, 59, tzinfo=UTC), "cleaning"),
        (datetime(2024, 5, 1, 0, 0, tzinfo=UTC), "security"),
        (datetime(2024, 5, 12, 9, 30, tzinfo=UTC), "staff_attitude"),
        (datetime(2024, 5, 20, 14, 0, tzinfo=UTC), "security"),
        (datetime(2024, 5, 21, 14, 0, tzinfo=UTC), None),
        (datetime(2024, 5, 31, 23, 59, 59, tzinfo=UTC), "maintenance"),
        (datetime(2024, 6, 1, 0, 0, tzinfo=UTC), "security"),
        (datetime(2024, 12, 31, 12, 0, tzinfo=UTC), "other"),
        (datetime(2025, 1, 1, 0, 0, tzinfo=UTC), "other"),
    ]
    for n, (at, complaint) in enumerate(calls):
        recorder.add(_summary(n, at, complaint))
    assert await recorder.flush() == len(calls)


async def test_complaint_counts_by_month(engine: AsyncEngine) -> None:
    await _record_complaints(engine)
    assert await complaint_counts(engine, 2024, 5) == {"maintenance": 1, "security": 2, "staff_attitude": 1}
    assert await complaint_counts(engine, 2024, 4) == {"cleaning": 1}
    assert await complaint_counts(engine, 2024, 12) == {"other": 1}
    assert await complaint_counts(engine, 2023, 5) == {}
    with pytest.raises(ValueError):
        await complaint_counts(engine, 2024, 13)


async def test_complaints_endpoint(client: Client, engine: AsyncEngine) -> None:
    await _record_complaints(engine)
    resp = await client.get("/admin/complaints", params={"month": "2024-05"}, headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {
        "month": "2024-05",
        "counts": {"maintenance": 1, "security": 2, "staff_attitude": 1},
        "total": 4,
    }
    resp = await client.get("/admin/complaints", headers=AUTH)  # this month
    assert resp.status == 200 and (await resp.json())["month"] == datetime.now(UTC).strftime("%Y-%m")
    for bad in ("2024-13", "2024-5", "May 2024", "0000-01"):
        resp = await client.get("/admin/complaints", params={"month": bad}, headers=AUTH)
        assert resp.status == 400
        answer = await resp.json()
        assert answer["detail"][0]["field"] == "month" and "month must be YYYY-MM" in answer["error"]
    resp = await client.get("/admin/complaints", params={"month": "2024-05"})
    assert resp.status == 401


async def test_ivr_fields_are_written_to_the_call_record(engine: AsyncEngine) -> None:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker

    recorder = CallRecorder(engine)
    at = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
    recorder.add(
        _summary(
            1,
            at,
            "cleaning",
            ivr_path="main complaints complaint_recorded",
            keys="31",
            ivr_outcomes="notice:north-outage,screened",
            recording="/var/lib/frontdesk/messages/call-1.wav",
        )
    )
    recorder.add(_summary(2, at, None))  # a call without IVR data: all None
    await recorder.flush()
    async with async_sessionmaker(engine)() as session:
        rows = (await session.scalars(select(CallRecord).order_by(CallRecord.id))).all()
    assert (rows[0].complaint, rows[0].ivr_path, rows[0].keys, rows[0].ivr_outcomes, rows[0].recording) == (
        "cleaning",
        "main complaints complaint_recorded",
        "31",
        "notice:north-outage,screened",
        "/var/lib/frontdesk/messages/call-1.wav",
    )
    assert (rows[1].complaint, rows[1].ivr_path, rows[1].keys, rows[1].ivr_outcomes, rows[1].recording) == ((None,) * 5)


# -- config ----------------------------------------------------------------------------


def test_admin_config() -> None:
    assert parse_config("").admin.token is None
    cfg = parse_config(f"admin:\n  token: {TOKEN}\n")
    assert cfg.admin.token is not None and cfg.admin.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(cfg)  # the secret stays out of logs and tracebacks
    with pytest.raises(ConfigError) as info:
        parse_config("admin:\n  token: short\n", "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml:2: admin.token: the admin token must be at least 16 characters")

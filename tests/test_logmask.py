"""Customers' numbers and text bodies in the log (callback/logmask.py): masked by default, clear when set.

The filter is checked on its own, then on a running server: an agent gives a
callback up, the customer is texted (R10), and the "log" text sender writes
the text to the server's log, masked unless ``security.log_numbers: clear``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import urllib.request
from collections.abc import Callable

import pytest
from support.server import Server
from support.waiting import wait_until

from callback import logmask
from ivr.settings.config import ConfigError, parse_config

NUMBER = "+4930123456789"
BODY = "Your callback code is 4711"


def logged(mode: logmask.LogNumbers, emit: Callable[[logging.Logger], None]) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logmask.install(mode, [handler])
    logger = logging.getLogger("test_logmask")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_number_keeps_its_last_three_digits_and_a_text_only_its_length() -> None:
    assert str(logmask.number(NUMBER)) == "***********789"
    assert f"{logmask.number(NUMBER)!r}" == "***********789"
    assert str(logmask.number("12")) == "**" and str(logmask.number("")) == "*"
    assert str(logmask.text(BODY)) == "<text, 26 characters>"
    # how a log record formats its arguments
    assert "%s to %s" % (logmask.text(BODY), logmask.number(NUMBER)) == "<text, 26 characters> to ***********789"  # noqa: UP031


def test_masked_lines_spill_the_number_nowhere_not_even_in_a_traceback() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("text to %s: %s", logmask.number(NUMBER), logmask.text(BODY))
        try:
            raise ValueError(f"bad destination number {NUMBER!r}")
        except ValueError as exc:
            logger.warning("text to %s not queued: %s", logmask.number(NUMBER), exc)
            logger.exception("could not close the callbacks of %s", logmask.number(NUMBER))

    text = logged("masked", emit)
    assert "***********789" in text and "<text, 26 characters>" in text
    assert "ValueError: bad destination number" in text  # the traceback is still there
    assert NUMBER not in text and "4711" not in text and "30123456" not in text, text


def test_clear_prints_the_values_as_they_are() -> None:
    text = logged("clear", lambda lg: lg.info("text to %s: %s", logmask.number(NUMBER), logmask.text(BODY)))
    assert text == f"text to {NUMBER}: {BODY}\n"


def test_the_setting_is_masked_or_clear() -> None:
    assert parse_config("").security.log_numbers == "masked"
    assert parse_config("security:\n  log_numbers: clear\n").security.log_numbers == "clear"
    with pytest.raises(ConfigError):
        parse_config("security:\n  log_numbers: partly\n")


def _give_up_a_callback(server: Server) -> None:
    """Book, claim and give up a callback over HTTP: the customer gets R10's text, written to the log."""
    auth = "Basic " + base64.b64encode(b"boss:supervisor pw").decode()

    def post(path: str, body: object | None) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data, method="POST")
        req.add_header("Authorization", auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=5) as r:
            return dict(json.loads(r.read()))

    booked = post("/callbacks", {"number": NUMBER, "queue": "general"})
    cb_id = booked["callback"]["id"]  # type: ignore[index]
    post(f"/callbacks/{cb_id}/claim", None)
    post(f"/callbacks/{cb_id}/give-up", {"notes": "no answer twice"})
    wait_until("a text in the server's log", lambda: "text #" in server.log_path.read_text(), timeout=10)


def _give_up_line(server: Server) -> str | None:
    """The log line of the give-up text (R10); a promise-at-risk text may come before it."""
    lines = server.log_path.read_text().splitlines()
    return next((li for li in lines if "text #" in li and "we tried to call you back" in li), None)


def _overrides(mode: str | None) -> dict[str, object]:
    ha1 = hashlib.md5(b"boss:frontdesk:supervisor pw").hexdigest()
    overrides: dict[str, object] = {
        "sip": {"realm": "frontdesk"},
        "agents": {"boss": {"ha1": ha1}},
        "callbacks": {"supervisors": ["boss"]},
    }
    if mode is not None:
        overrides["security"] = {"log_numbers": mode}
    return overrides


def test_the_server_logs_a_customers_text_masked_by_default(
    server_factory: Callable[[dict[str, object]], Server],
) -> None:
    server = server_factory(_overrides(None))
    _give_up_a_callback(server)
    log = server.log_path.read_text()
    line = next(li for li in log.splitlines() if "text #" in li)
    assert "***********789" in line and "<text, " in line, line
    assert NUMBER not in log and "30123456" not in log and "we tried to call you back" not in log


def test_the_server_logs_them_in_clear_when_asked(server_factory: Callable[[dict[str, object]], Server]) -> None:
    server = server_factory(_overrides("clear"))
    _give_up_a_callback(server)
    wait_until("the give-up text in the server's log", lambda: _give_up_line(server) is not None, timeout=10)
    line = _give_up_line(server)
    assert line is not None and NUMBER in line and "we tried to call you back" in line, line

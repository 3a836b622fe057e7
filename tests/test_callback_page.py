"""The agents' callback page in headless Chromium (Debian's chromium + chromedriver) against the real server.

An agent logs in with the SIP password, sees the list, claims the caller
who has waited longest and marks the case done; the database then says so.
Chromium may reach nothing but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from support.server import Server

from callback.db import create_engine
from callback.store import Callback, CallbackStore

PASSWORDS = {"8001": "page agent pw", "8002": "other agent pw", "boss": "supervisor pw"}
WAIT = 10.0  # seconds any one step may take
BUDGET = 30.0  # seconds for the whole browser session

T = TypeVar("T")


def ha1(name: str, password: str) -> str:
    return hashlib.md5(f"{name}:frontdesk:{password}".encode()).hexdigest()


def with_store(server: Server, work: Callable[[CallbackStore], Awaitable[T]]) -> T:
    """Run ``work`` on a CallbackStore over the server's own SQLite file."""

    async def run() -> T:
        engine = create_engine(f"sqlite+aiosqlite:///{server.db_path}")
        try:
            return await work(CallbackStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("Debian's chromium and chromium-driver are needed: `make test` installs them")
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary, driver_path = chromium_paths()
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--autoplay-policy=user-gesture-required",
        # nothing but 127.0.0.1 resolves
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=direct://",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    # both paths given: Selenium Manager (which would download a browser) is never run
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page_server(server_factory: Callable[[dict[str, object]], Server]) -> Server:
    server = server_factory(
        {
            "sip": {"realm": "frontdesk"},
            "agents": {name: {"ha1": ha1(name, pw)} for name, pw in PASSWORDS.items()},
            "callbacks": {"supervisors": ["boss"]},
        }
    )
    server.http_get("/agent/callbacks")  # the page is served (404 would raise)
    return server


def book(store: CallbackStore, number: str, waited: float) -> Awaitable[Callback]:
    now = datetime.now(UTC)
    return store.book(
        queue="general",
        number=number,
        arrived_at=now - timedelta(seconds=waited),
        promised_by=now + timedelta(hours=1),
        now=now,
    )


def visible(driver: WebDriver, element_id: str) -> Any:
    return WebDriverWait(driver, WAIT).until(ec.visibility_of_element_located((By.ID, element_id)))


def rows(driver: WebDriver) -> list[tuple[str, str]]:
    """(callback id, row text) of the list as shown now (read in one go: the list redraws itself)."""
    script = "return [...document.querySelectorAll('#callback-rows tr')].map(r => [r.dataset.id, r.innerText])"
    return [(str(i), str(text)) for i, text in driver.execute_script(script)]


def wait_rows(driver: WebDriver, check: Callable[[list[tuple[str, str]]], bool], what: str) -> list[tuple[str, str]]:
    try:
        return WebDriverWait(driver, WAIT).until(lambda d: (shown := rows(d)) and check(shown) and shown)
    except TimeoutException:
        pytest.fail(f"the list never showed {what}; it shows {rows(driver)}")


def click(driver: WebDriver, css: str) -> None:
    """Click the element, finding it again if the list was redrawn in between."""

    def attempt(d: WebDriver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    WebDriverWait(driver, WAIT).until(attempt)


def test_agent_logs_in_claims_and_marks_done(page_server: Server, browser: WebDriver) -> None:
    started = time.monotonic()
    first = with_store(page_server, lambda s: book(s, "+4930111", 600))
    second = with_store(page_server, lambda s: book(s, "+4930222", 60))
    url = f"http://127.0.0.1:{page_server.http_port}/agent/callbacks"

    browser.get(url)
    assert browser.title.startswith("Callbacks")
    visible(browser, "login-agent").send_keys("8001")
    browser.find_element(By.ID, "login-password").send_keys("wrong")
    browser.find_element(By.ID, "login-button").click()
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element((By.ID, "problem"), "wrong agent name"))
    browser.find_element(By.ID, "login-password").send_keys(PASSWORDS["8001"])
    browser.find_element(By.ID, "login-button").click()

    # the list: both callers, the one who waited longest first
    visible(browser, "list-section")
    assert browser.find_element(By.ID, "agent-name").text == "8001"
    shown = wait_rows(browser, lambda r: len(r) == 2, "both callbacks")
    assert [i for i, _ in shown] == [str(first.id), str(second.id)]
    assert "+4930111" in shown[0][1] and "due" in shown[0][1]

    # claim the first: its panel opens, the row says it is ours
    click(browser, f'button[aria-label="Claim callback {first.id}"]')
    visible(browser, "work-section")
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element((By.ID, "work-state"), "offered"))
    assert browser.find_element(By.ID, "work-id").text == str(first.id)
    assert browser.find_element(By.ID, "work-number").text == "+4930111"
    held = with_store(page_server, lambda s: s.get(first.id))
    assert (held.state, held.claimed_by) == ("offered", "8001")
    wait_rows(browser, lambda r: "8001" in dict(r).get(str(first.id), ""), "the claim")

    # record the result: done, with notes
    browser.find_element(By.ID, "notes").send_keys("Explained the new tariff; customer satisfied.")
    browser.find_element(By.ID, "done").click()
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element((By.ID, "status"), f"Callback {first.id} done"))
    WebDriverWait(browser, WAIT).until(ec.invisibility_of_element_located((By.ID, "work-section")))
    wait_rows(browser, lambda r: [i for i, _ in r] == [str(second.id)], "only the other callback")
    assert browser.find_element(By.ID, "problem").text == ""

    done = with_store(page_server, lambda s: s.get(first.id))
    assert (done.state, done.outcome, done.claimed_by, done.attempts) == ("completed", "completed", "8001", 1)
    assert done.notes is not None and "8001] Explained the new tariff; customer satisfied." in done.notes
    untouched = with_store(page_server, lambda s: s.get(second.id))
    assert (untouched.state, untouched.claimed_by, untouched.attempts) == ("due", None, 0)
    assert time.monotonic() - started < BUDGET

"""Waiting for something that happens in another thread or process: one poll loop for the whole suite.

A test waits for a condition with a deadline, never a fixed sleep: it goes on
as soon as the condition holds, and a failure says what it waited for.
:func:`wait_until` polls a plain function (from a test's own thread);
:func:`wait_until_async` is the same loop for an ``async`` check, inside the
event loop of an async test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something true and return that; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return result


async def wait_until_async(
    what: str, check: Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.01
) -> T:
    """:func:`wait_until` for an async ``check``: the event loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return result

"""Customers' numbers and text bodies in log lines: masked unless ``security.log_numbers`` is ``clear``.

A log call wraps what it must not spill: ``log.info("text to %s: %s", number(to), text(body))``. Such a value
prints masked wherever it goes (``*******567``, ``<text, 84 characters>``), so a log line written before
start-up or in a test spills nothing either. :class:`LogPrivacy`, a filter that ``frontdesk serve`` puts on
every log handler (``install``), does the rest: with ``masked`` it also blanks the clear value where it shows up
again in the same record (an exception's message, its traceback), with ``clear`` it prints the values as
they are (a test bench, an operator chasing one call). It lives beside the texts outbox, the other part that
handles customers' numbers and texts, so that both ``callback`` and ``ivr`` can use it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

LogNumbers = Literal["masked", "clear"]
KEEP = 3  # digits of a number left visible: enough to tell two callers apart in one incident


class Sensitive:
    """A value that a log line shows masked; ``value`` is the clear text."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = "" if value is None else str(value)

    def masked(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return self.masked()

    def __format__(self, spec: str) -> str:
        return format(self.masked(), spec)


class CustomerNumber(Sensitive):
    """A customer's number: every character but the last three digits becomes ``*``."""

    __slots__ = ()

    def masked(self) -> str:
        if len(self.value) <= KEEP:
            return "*" * max(len(self.value), 1)
        return "*" * (len(self.value) - KEEP) + self.value[-KEEP:]


class TextBody(Sensitive):
    """A text message's body: only its length."""

    __slots__ = ()

    def masked(self) -> str:
        return f"<text, {len(self.value)} characters>"


def number(value: object) -> CustomerNumber:
    return CustomerNumber(value)


def text(value: object) -> TextBody:
    return TextBody(value)


def _sensitive(args: Any) -> list[Sensitive]:
    values = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else ()
    return [a for a in values if isinstance(a, Sensitive)]


class LogPrivacy(logging.Filter):
    """Masks (or, with ``clear``, unmasks) the :class:`Sensitive` values of every record it sees."""

    def __init__(self, mode: LogNumbers = "masked") -> None:
        super().__init__()
        self.mode = mode

    def filter(self, record: logging.LogRecord) -> bool:
        found = _sensitive(record.args)
        if not found:
            return True
        if self.mode == "clear":
            if isinstance(record.args, dict):
                record.args = {k: v.value if isinstance(v, Sensitive) else v for k, v in record.args.items()}
            elif isinstance(record.args, tuple):
                record.args = tuple(a.value if isinstance(a, Sensitive) else a for a in record.args)
            return True
        # masked: the clear values must not come back through an exception's message or traceback either
        message = _scrub(record.getMessage(), found)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _scrub(record.exc_text, found)
        record.msg, record.args = message, None
        return True


def _scrub(line: str, values: Iterable[Sensitive]) -> str:
    for value in sorted(values, key=lambda v: len(v.value), reverse=True):
        if len(value.value) > KEEP:  # a value this short would blank unrelated characters
            line = line.replace(value.value, value.masked())
    return line


def install(mode: LogNumbers, handlers: Iterable[logging.Handler] | None = None) -> LogPrivacy:
    """Put one :class:`LogPrivacy` on ``handlers`` (default: the root logger's, once ``basicConfig`` ran)."""
    privacy = LogPrivacy(mode)
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        for old in [f for f in handler.filters if isinstance(f, LogPrivacy)]:
            handler.removeFilter(old)
        handler.addFilter(privacy)
    return privacy


__all__ = ["KEEP", "CustomerNumber", "LogNumbers", "LogPrivacy", "Sensitive", "TextBody", "install", "number", "text"]

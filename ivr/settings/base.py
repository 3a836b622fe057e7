"""What every YAML file the project reads shares: the strict model base and the one error reader.

The server's config (``ivr/settings/config.py``) and the simulator's scenarios
(``sim/scenario.py``) are both YAML validated by pydantic models built on
:class:`Strict`. A validator that finds a problem somewhere below its own field
(a cross reference, a duplicate) calls :func:`raise_problems` with the exact
location, and :func:`explain` turns every error into ``file:line: field:
message``, finding the line in the YAML node tree (:func:`line_of`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

#: A location in the file: mapping keys and list indexes from the top (``("queues", "general", "tiers", 0)``).
Loc = tuple[str | int, ...]
#: One problem found by a validator: where (relative to the model it validates), what, and the value found.
Problem = tuple[Loc, str, Any]


class Strict(BaseModel):
    """A section of a file: unknown keys are refused (a typo is never ignored) and the result is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def raise_problems(title: str, problems: Iterable[Problem]) -> NoReturn:
    """Raise a ValidationError at exact locations; pydantic prefixes them with the path of the field validated."""
    details = [
        InitErrorDetails(type=PydanticCustomError("settings", "{msg}", {"msg": msg}), loc=loc, input=value)
        for loc, msg, value in problems
    ]
    raise ValidationError.from_exception_data(title, details)


def not_shorter_than(other: str) -> Callable[[Any, ValidationInfo], Any]:
    """A field validator: this field (seconds) must not be shorter than ``other``, a field declared before it."""

    def check(v: Any, info: ValidationInfo) -> Any:
        low = info.data.get(other)
        if low is not None and v < low:
            raise ValueError(f"{info.field_name} ({v} s) must not be shorter than {other} ({low} s)")
        return v

    return check


def ends_after_start(what: str) -> Callable[[int, ValidationInfo], int]:
    """A field validator for ``end`` of a daily ``what`` (minutes after midnight): after ``start``."""

    def check(v: int, info: ValidationInfo) -> int:
        start = info.data.get("start")
        if start is not None and v <= start:
            raise ValueError(f"end must be after start (a {what} past midnight is two {what}s)")
        return v

    return check


def suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_dir(info: ValidationInfo) -> Path:
    """The directory relative paths in the file are read from (the loader passes it in the context)."""
    context = info.context
    if isinstance(context, dict) and context.get("config_dir") is not None:
        return Path(context["config_dir"])
    return Path(".")


def resolve_path(v: Path | None, info: ValidationInfo) -> Path | None:
    """A path from the file, made absolute relative to the file's directory."""
    return None if v is None else (config_dir(info) / v).resolve()


def read_yaml(text: str, filename: str, error: type[Exception]) -> tuple[Any, Any]:
    """The YAML node tree (for line numbers) and the data of ``text``; bad YAML raises ``error`` with the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise error(f"{filename}:{line}: not valid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # e.g. a control character
        line = text_line(text[: exc.position])
        raise error(f"{filename}:{line}: not valid YAML: {exc.reason} ({exc.character!r})") from None
    except yaml.YAMLError as exc:
        raise error(f"{filename}: not valid YAML: {exc}") from None
    return node, data


def explain(exc: ValidationError, node: Any, filename: str) -> str:
    """``file:line: field: message`` for every error of a model validated from the YAML ``node``."""
    problems = []
    for err in exc.errors():
        # leave out pydantic's own steps (validator functions, members of a union such as list[float])
        loc = [p for p in err["loc"] if not (isinstance(p, str) and _pydantic_step(p))]
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        problems.append(f"{filename}:{line_of(node, loc)}: {field}: {msg}")
    return "\n".join(problems)


def text_line(before: str | bytes) -> int:
    """1-based line number of the position just after ``before``."""
    if isinstance(before, bytes):
        return before.count(b"\n") + 1
    return before.count("\n") + 1


def _pydantic_step(part: str) -> bool:
    """A location part that is pydantic's, not the file's (``[key]`` stays: the key itself is wrong)."""
    return part.startswith("function-") or ("[" in part and part != "[key]")


def line_of(node: Any, loc: Iterable[Any]) -> int:
    """Line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key or (isinstance(key, int) and k.value == str(key)):  # e.g. an unquoted number
                    # point at the key for a missing child, at the value otherwise
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line

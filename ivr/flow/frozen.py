"""Frozen values that copy and pickle through their constructor, compiled or not.

``copy`` and ``pickle`` rebuild a dataclass by default by setting each field on
a blank instance. A frozen dataclass compiled with mypyc refuses that
(``FrozenInstanceError``), so the flow's values (its program, events and
actions) register a reduction that calls the constructor with their fields.
"""

from __future__ import annotations

import copyreg
from dataclasses import fields
from typing import Any


def _rebuilt(value: Any) -> tuple[type, tuple[Any, ...]]:
    return type(value), tuple(getattr(value, f.name) for f in fields(value) if f.init)


def copyable(*classes: type) -> None:
    """Let ``copy`` and ``pickle`` rebuild these frozen dataclasses from their fields."""
    for cls in classes:
        copyreg.pickle(cls, _rebuilt)


__all__ = ["copyable"]

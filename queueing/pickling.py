"""Pickle support for the engine and its model, the same compiled (mypyc) or pure (cluster mode checkpoints engines).

Two things stop the defaults: a compiled class with a constructor that takes
arguments runs it when pickle makes the empty object, and a compiled frozen
dataclass refuses the attribute sets of unpickling. So the frozen specs are
pickled as their fields and built again (``reduce_fields``), and an object with
state of its own as its constructor's arguments plus every attribute, put back
after the constructor ran (``reduce_state``). A ``MappingProxyType`` (the
specs' read-only skill tables) does not pickle: it travels as a dict and is
wrapped again.
"""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType
from typing import Any


def _plain(value: Any) -> Any:
    return dict(value) if type(value) is MappingProxyType else value


def reduce_fields(spec: Any) -> tuple[Any, ...]:
    """``__reduce__`` of a frozen dataclass: its class and fields, in order."""
    values = tuple(getattr(spec, f.name) for f in fields(spec))
    proxies = tuple(i for i, v in enumerate(values) if type(v) is MappingProxyType)
    return (rebuild_fields, (type(spec), tuple(_plain(v) for v in values), proxies))


def rebuild_fields(cls: type, values: tuple[Any, ...], proxies: tuple[int, ...]) -> Any:
    return cls(*(MappingProxyType(v) if i in proxies else v for i, v in enumerate(values)))


def attributes(obj: object) -> tuple[str, ...]:
    """The names of an object's attributes: a compiled class lists them, a pure object has its ``__dict__``."""
    names: tuple[str, ...] | None = getattr(type(obj), "__mypyc_attrs__", None)
    return names if names is not None else tuple(vars(obj))


def reduce_state(obj: object, *args: Any) -> tuple[Any, ...]:
    """``__reduce__`` of an object built by ``type(obj)(*args)`` whose attributes then changed."""
    return (rebuild_state, (type(obj), args, {name: getattr(obj, name) for name in attributes(obj)}))


def rebuild_state(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    obj = cls(*args)
    for name, value in state.items():
        setattr(obj, name, value)
    return obj

"""The cluster log's entries: one queue event (and the node that appended it) as the fields of a stream entry.

An entry has two fields: ``o``, the origin node's id, and ``e``, the event
as one JSON object: ``{"type": "CallArrived", "call_id": ..., ...}`` with
every field of the event, no more and no fewer. Sets are sorted lists,
tuples are lists, floats are finite. Only the events a cluster logs are
accepted: the queue events a node sends its engine (not the live
reconfigurations, which a cluster refuses for now) and the cluster's own
(``PhoneBindings``, ``NodeLost``, ``NodeJoined``, and ``Rebuild``, which
starts a new generation; ``Isolated`` never leaves its node).
An event is at most :data:`MAX_EVENT_BYTES` of JSON, but a ``Rebuild`` (every
node's callers and agents) may take :data:`MAX_REBUILD_BYTES`.

``decode`` reads what any writer of the stream may have put there, so it
checks everything and raises ``WireError`` (a ``ValueError``) with a clear
message for anything malformed, and never anything else; ``encode`` refuses
what ``decode`` would refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ivr.cluster.coordinator import (
    AgentPart,
    CallerPart,
    ClusterEvent,
    NodeJoined,
    NodeLost,
    NodePart,
    PhoneBindings,
    Rebuild,
)
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentNoAnswer,
    AgentNotReady,
    AgentReady,
    CallArrived,
    CallEnded,
    CallerHungUp,
    Event,
    SurgeSwitch,
    TimerFired,
)

MAX_EVENT_BYTES = 64 * 1024  # the JSON of one event, UTF-8
MAX_REBUILD_BYTES = 64 * 1024 * 1024  # the JSON of a Rebuild: every node's callers and agents
MAX_PARTS = 1024  # nodes in one Rebuild
MAX_ORIGIN_CHARS = 256
MAX_BINDINGS = 64  # of one agent on one node
ORIGIN, EVENT = "o", "e"
SURGE_CAUSES = ("manual", "schedule", "auto")


class WireError(ValueError):
    """A log entry (or an event to append) that is not a well-formed cluster event."""


Check = Callable[[object, str], object]


# ---------------------------------------------------------------- field checks


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"{where} must be a string, not {_kind(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise WireError(f"{where} is not valid Unicode (a lone surrogate)") from None
    return value


def _time(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{where} must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise WireError(f"{where} is too large") from None
    if not math.isfinite(number):
        raise WireError(f"{where} must be finite, not {number}")
    return number


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"{where} must be true or false, not {_kind(value)}")
    return value


def _flag_or_none(value: object, where: str) -> bool | None:
    return None if value is None else _flag(value, where)


def _cause(value: object, where: str) -> str:
    if value not in SURGE_CAUSES:
        raise WireError(f"{where} must be one of {', '.join(SURGE_CAUSES)}, not {value!r:.40}")
    return str(value)


def _skills(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise WireError(f"{where} must be a list of strings, not {_kind(value)}")
    return frozenset(_text(v, f"{where}[{i}]") for i, v in enumerate(value))


def _port(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise WireError(f"{where} must be a port number 1..65535, not {value!r:.40}")
    return value


def _bindings(value: object, where: str) -> tuple[tuple[str, tuple[str, str, int], float], ...]:
    if not isinstance(value, list):
        raise WireError(f"{where} must be a list, not {_kind(value)}")
    if len(value) > MAX_BINDINGS:
        raise WireError(f"{where} holds {len(value)} bindings, more than {MAX_BINDINGS}")
    out = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, list) or len(item) != 3:
            raise WireError(f"{at} must be [contact, [transport, host, port], expires_at]")
        contact, peer, expires_at = item
        if not isinstance(peer, list) or len(peer) != 3:
            raise WireError(f"{at}'s peer must be [transport, host, port]")
        out.append(
            (
                _text(contact, f"{at}'s contact"),
                (_text(peer[0], f"{at}'s transport"), _text(peer[1], f"{at}'s host"), _port(peer[2], f"{at}'s port")),
                _time(expires_at, f"{at}'s expires_at"),
            )
        )
    return tuple(out)


def _list(value: object, where: str, size: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (size is not None and len(value) != size):
        raise WireError(f"{where} must be a list" + (f" of {size} items" if size is not None else ""))
    return value


def _generation(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise WireError(f"{where} must be a positive whole number, not {value!r:.40}")
    return value


def _caller(value: object, where: str) -> CallerPart:
    call_id, queue, tier, skills, urgent, arrived, agent = _list(value, where, 7)
    return (
        _text(call_id, f"{where}'s call id"),
        _text(queue, f"{where}'s queue"),
        _text(tier, f"{where}'s tier"),
        tuple(sorted(_skills(skills, f"{where}'s skills"))),
        _flag(urgent, f"{where}'s urgent"),
        _time(arrived, f"{where}'s arrival"),
        None if agent is None else _text(agent, f"{where}'s agent"),
    )


def _agent(value: object, where: str) -> AgentPart:
    agent, state, reason, phones = _list(value, where, 4)
    bound = []
    for i, item in enumerate(_list(phones, f"{where}'s phones")[:MAX_BINDINGS]):
        contact, peer, expires_at, registered_at = _list(item, f"{where}'s phones[{i}]", 4)
        ((contact, peer, expires_at),) = _bindings([[contact, peer, expires_at]], f"{where}'s phones[{i}]")
        bound.append((contact, peer, expires_at, _time(registered_at, f"{where}'s phones[{i}] registered_at")))
    return (
        _text(agent, f"{where}'s agent"),
        _text(state, f"{where}'s state"),
        None if reason is None else _text(reason, f"{where}'s reason"),
        tuple(bound),
    )


def _parts(value: object, where: str) -> tuple[NodePart, ...]:
    items = _list(value, where)
    if len(items) > MAX_PARTS:
        raise WireError(f"{where} holds {len(items)} nodes, more than {MAX_PARTS}")
    parts = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or set(item) != {"node", "callers", "agents"}:
            raise WireError(f"{at} must be an object with node, callers and agents")
        parts.append(
            NodePart(
                _text(item["node"], f"{at}.node"),
                tuple(_caller(c, f"{at}.callers[{j}]") for j, c in enumerate(_list(item["callers"], f"{at}.callers"))),
                tuple(_agent(a, f"{at}.agents[{j}]") for j, a in enumerate(_list(item["agents"], f"{at}.agents"))),
            )
        )
    return tuple(parts)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# ---------------------------------------------------------------- the events

_FIELDS: dict[type, dict[str, Check]] = {
    CallArrived: {
        "call_id": _text,
        "queue": _text,
        "tier": _text,
        "skills": _skills,
        "urgent": _flag,
        "now": _time,
    },
    AgentLoggedIn: {"agent": _text, "now": _time},
    AgentReady: {"agent": _text, "now": _time},
    AgentNotReady: {"agent": _text, "reason": _text, "now": _time},
    AgentLoggedOut: {"agent": _text, "now": _time},
    AgentAnswered: {"agent": _text, "call": _text, "now": _time},
    AgentNoAnswer: {"agent": _text, "call": _text, "now": _time},
    CallEnded: {"call": _text, "now": _time},
    CallerHungUp: {"call": _text, "now": _time},
    TimerFired: {"kind": _text, "id": _text, "now": _time},
    SurgeSwitch: {"on": _flag_or_none, "cause": _cause, "now": _time},
    PhoneBindings: {"node": _text, "agent": _text, "bindings": _bindings, "now": _time},
    NodeLost: {"node": _text, "now": _time},
    NodeJoined: {"node": _text, "now": _time},
    Rebuild: {"generation": _generation, "parts": _parts, "now": _time},
}
_BY_NAME = {cls.__name__: (cls, fields) for cls, fields in _FIELDS.items()}
ACCEPTED = tuple(_BY_NAME)  # the names of the event types a log entry may hold


def _plain(value: object) -> object:
    """An event's field as JSON data: sets sorted, tuples as lists."""
    if isinstance(value, (frozenset, set)):
        return sorted(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, NodePart):
        return {"node": value.node, "callers": _plain(value.callers), "agents": _plain(value.agents)}
    return value


def encode(origin: str, event: Event | ClusterEvent) -> dict[bytes | str, bytes | str]:
    """The stream fields of ``event`` appended by node ``origin``; WireError for what ``decode`` would refuse."""
    fields = _FIELDS.get(type(event))
    if fields is None:
        raise WireError(f"{type(event).__name__} is not an event the cluster log carries")
    body = {"type": type(event).__name__, **{name: _plain(getattr(event, name)) for name in fields}}
    try:
        text = json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:  # NaN or infinity
        raise WireError(f"{type(event).__name__}: numbers must be finite") from None
    except TypeError as exc:  # a field of a type JSON has no form for
        raise WireError(f"{type(event).__name__}: {exc}") from None
    entry: dict[bytes | str, bytes | str] = {ORIGIN: origin, EVENT: text}
    decode(entry)  # the same checks as every reader: the log never holds what a reader refuses
    return entry


def decode(fields: Mapping[Any, Any]) -> tuple[str, Event | ClusterEvent]:
    """(origin, event) of one stream entry's fields; WireError, with what is wrong, for anything malformed."""
    try:
        return _decode(fields)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError, AttributeError, KeyError, IndexError) as exc:
        raise WireError(f"malformed entry: {str(exc)[:160] or type(exc).__name__}") from None


def _decode(fields: Mapping[Any, Any]) -> tuple[str, Event | ClusterEvent]:
    if not isinstance(fields, Mapping):
        raise WireError(f"an entry is a mapping of fields, not {type(fields).__name__}")
    values: dict[str, str] = {}
    for key, value in fields.items():
        name = _field_text(key, "a field name")
        if name not in (ORIGIN, EVENT):
            raise WireError(f"unknown field {name!r:.40} (an entry has {ORIGIN!r} and {EVENT!r} only)")
        if name in values:
            raise WireError(f"field {name!r} given twice")
        values[name] = _field_text(value, f"field {name!r}", limit=_cap(name, value))
    for name in (ORIGIN, EVENT):
        if name not in values:
            raise WireError(f"missing field {name!r}")
    origin = values[ORIGIN]
    if not origin or len(origin) > MAX_ORIGIN_CHARS:
        raise WireError(f"the origin must be a node id of 1..{MAX_ORIGIN_CHARS} characters")
    _text(origin, "the origin")
    try:
        body = json.loads(values[EVENT], parse_constant=_no_constant)
    except RecursionError:
        raise WireError("the event is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise WireError(f"the event is not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(body, dict):
        raise WireError(f"the event must be a JSON object, not {_kind(body)}")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in _BY_NAME:
        raise WireError(f"unknown event type {kind!r:.60} (known: {', '.join(ACCEPTED)})")
    if kind == "Rebuild" and not values[EVENT].startswith(_REBUILD_HEAD):
        raise WireError(f"a Rebuild's JSON starts with {_REBUILD_HEAD}")
    raw = values[EVENT]  # under a quarter of the cap in characters is under it in UTF-8: no encode per entry
    if kind != "Rebuild" and len(raw) > MAX_EVENT_BYTES // 4 and (size := len(raw.encode())) > MAX_EVENT_BYTES:
        # a Rebuild's head then another "type" (JSON's last key wins) earns no other event the larger cap
        raise WireError(f"field {EVENT!r} is {size} bytes, over the cap of {MAX_EVENT_BYTES}")
    cls, checks = _BY_NAME[kind]
    if extra := sorted(set(body) - set(checks) - {"type"}):
        raise WireError(f"{kind}: unknown field {', '.join(repr(k)[:40] for k in extra[:3])}")
    if missing := [k for k in checks if k not in body]:
        raise WireError(f"{kind}: missing field {', '.join(missing)}")
    args = {k: check(body[k], f"{kind}.{k}") for k, check in checks.items()}
    return origin, cls(**args)


_REBUILD_HEAD = '{"type":"Rebuild",'  # as encode() writes it: only such an entry may exceed MAX_EVENT_BYTES


def _cap(name: str, value: object) -> int:
    """Bytes field ``name`` may take: a Rebuild (as encode writes it) gets more than any other event."""
    if name != EVENT or not isinstance(value, (str, bytes)):
        return 1024
    head = value[: len(_REBUILD_HEAD)]
    if isinstance(head, bytes):
        head = head.decode(errors="replace")
    return MAX_REBUILD_BYTES if head == _REBUILD_HEAD else MAX_EVENT_BYTES


def _no_constant(constant: str) -> object:
    raise WireError(f"the event holds {constant}: numbers must be finite")


def _field_text(value: object, where: str, limit: int = 1024) -> str:
    if isinstance(value, bytes):
        if len(value) > limit:
            raise WireError(f"{where} is {len(value)} bytes, over the cap of {limit}")
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise WireError(f"{where} is not UTF-8") from None
    if isinstance(value, str):
        size = len(value.encode(errors="surrogatepass"))
        if size > limit:
            raise WireError(f"{where} is {size} bytes, over the cap of {limit}")
        return value
    raise WireError(f"{where} must be text, not {type(value).__name__}")


def part_to_json(part: NodePart) -> str:
    """A node's part of a new generation as JSON (kept in Redis until the generation is sealed)."""
    return json.dumps(_plain(part), allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def part_from_json(text: str) -> NodePart:
    """The part ``part_to_json`` wrote; WireError when it is malformed."""
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"a node's part is not JSON: {exc}") from None
    return _parts([body], "part")[0]


__all__ = [
    "ACCEPTED",
    "MAX_EVENT_BYTES",
    "MAX_REBUILD_BYTES",
    "WireError",
    "decode",
    "encode",
    "part_from_json",
    "part_to_json",
]

"""ivr/cluster/wire.py: every cluster event survives the log, and anything malformed is a WireError, never a crash."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.cluster.coordinator import NodeJoined, NodeLost, NodePart, PhoneBindings, Rebuild
from ivr.cluster.wire import ACCEPTED, MAX_EVENT_BYTES, MAX_REBUILD_BYTES, WireError, decode, encode
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
    QueueReconfigured,
    SurgeReconfigured,
    SurgeSwitch,
    TimerFired,
)
from queueing.model import QueueSpec, SurgeSpec

text = st.text(max_size=40)
times = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**12), 10**12)
peers = st.tuples(text, text, st.integers(1, 65535))
bindings = st.lists(st.tuples(text, peers, times), max_size=5).map(tuple)

EVENTS = st.one_of(
    st.builds(
        CallArrived, call_id=text, queue=text, tier=text, skills=st.frozensets(text), urgent=st.booleans(), now=times
    ),
    st.builds(AgentLoggedIn, agent=text, now=times),
    st.builds(AgentReady, agent=text, now=times),
    st.builds(AgentNotReady, agent=text, reason=text, now=times),
    st.builds(AgentLoggedOut, agent=text, now=times),
    st.builds(AgentAnswered, agent=text, call=text, now=times),
    st.builds(AgentNoAnswer, agent=text, call=text, now=times),
    st.builds(CallEnded, call=text, now=times),
    st.builds(CallerHungUp, call=text, now=times),
    st.builds(TimerFired, kind=text, id=text, now=times),
    st.builds(
        SurgeSwitch,
        on=st.sampled_from([True, False, None]),
        cause=st.sampled_from(["manual", "schedule", "auto"]),
        now=times,
    ),
    st.builds(PhoneBindings, node=text, agent=text, bindings=bindings, now=times),
    st.builds(NodeLost, node=text, now=times),
    st.builds(NodeJoined, node=text, now=times),
    st.builds(
        Rebuild,
        generation=st.integers(1, 2**40),
        parts=st.lists(
            st.builds(
                NodePart,
                node=text,
                callers=st.lists(
                    st.tuples(
                        text,
                        text,
                        text,
                        st.frozensets(text).map(lambda s: tuple(sorted(s))),
                        st.booleans(),
                        times.map(float),
                        st.none() | text,
                    ),
                    max_size=3,
                ).map(tuple),
                agents=st.lists(
                    st.tuples(
                        text,
                        text,
                        st.none() | text,
                        st.lists(st.tuples(text, peers, times, times), max_size=2).map(tuple),
                    ),
                    max_size=3,
                ).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
        now=times,
    ),
)
ORIGINS = st.text(min_size=1, max_size=30)


def entry(body: object, origin: object = "n1") -> dict[str, object]:
    return {"o": origin, "e": body if isinstance(body, (str, bytes)) else json.dumps(body)}


def as_redis_gives_it(fields: dict[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    return {k.encode() if isinstance(k, str) else k: v.encode() if isinstance(v, str) else v for k, v in fields.items()}


NODE_LOST = {"type": "NodeLost", "node": "n2", "now": 5.0}


# ----------------------------------------------------------------- round trips


@settings(max_examples=400, deadline=None)
@given(origin=ORIGINS, event=EVENTS)
def test_every_cluster_event_survives_the_log(origin: str, event: object) -> None:
    fields = encode(origin, event)  # type: ignore[arg-type]
    assert set(fields) == {"o", "e"}
    assert decode(fields) == (origin, event)
    assert decode(as_redis_gives_it(fields)) == (origin, event)  # redis-py hands back bytes


def test_the_log_carries_exactly_the_queue_events_of_a_node_and_the_cluster_events() -> None:
    assert set(ACCEPTED) == {
        "CallArrived",
        "AgentLoggedIn",
        "AgentReady",
        "AgentNotReady",
        "AgentLoggedOut",
        "AgentAnswered",
        "AgentNoAnswer",
        "CallEnded",
        "CallerHungUp",
        "TimerFired",
        "SurgeSwitch",
        "PhoneBindings",
        "NodeLost",
        "NodeJoined",
        "Rebuild",
    }
    for refused in (QueueReconfigured(spec=QueueSpec("sales"), now=1.0), SurgeReconfigured(spec=SurgeSpec(), now=1.0)):
        with pytest.raises(WireError, match="not an event the cluster log carries"):
            encode("n1", refused)
    with pytest.raises(WireError, match="unknown event type 'QueueReconfigured'"):
        decode(entry({"type": "QueueReconfigured", "spec": {}, "now": 1.0}))


def test_sets_are_sorted_lists_on_the_wire() -> None:
    event = CallArrived(
        call_id="c1", queue="sales", tier="ordinary", skills=frozenset({"fr", "de", "billing"}), now=1.0
    )
    body = json.loads(encode("n1", event)["e"])
    assert body == {
        "type": "CallArrived",
        "call_id": "c1",
        "queue": "sales",
        "tier": "ordinary",
        "skills": ["billing", "de", "fr"],
        "urgent": False,
        "now": 1.0,
    }


# ----------------------------------------------------------------- what encode refuses


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_an_event_with_a_time_that_is_not_finite_is_not_appended(bad: float) -> None:
    with pytest.raises(WireError, match="finite"):
        encode("n1", NodeLost("n2", bad))
    with pytest.raises(WireError, match="finite"):
        encode("n1", PhoneBindings("n1", "a1", (("sip:a1@x", ("udp", "h", 5060), bad),), 1.0))


def test_an_event_with_a_field_of_the_wrong_type_is_not_appended() -> None:
    with pytest.raises(WireError, match=r"NodeLost\.now must be a number"):
        encode("n1", NodeLost("n2", "5"))  # type: ignore[arg-type]
    with pytest.raises(WireError, match="not JSON serializable"):
        encode("n1", NodeLost(object(), 5.0))  # type: ignore[arg-type]
    with pytest.raises(WireError, match="origin must be a node id"):
        encode("", NodeLost("n2", 5.0))


def test_an_event_over_the_size_cap_is_refused_with_the_cap_named() -> None:
    huge = CallArrived(call_id="c" * MAX_EVENT_BYTES, queue="sales", tier="ordinary", now=1.0)
    with pytest.raises(WireError, match=f"over the cap of {MAX_EVENT_BYTES}"):
        encode("n1", huge)
    just_under = CallArrived(call_id="c" * (MAX_EVENT_BYTES - 200), queue="sales", tier="ordinary", now=1.0)
    assert decode(encode("n1", just_under))[1] == just_under
    with pytest.raises(WireError, match="over the cap"):
        decode({"o": "n1", "e": json.dumps({**NODE_LOST, "node": "é" * (MAX_EVENT_BYTES // 2)})})  # bytes, not chars


# ----------------------------------------------------------------- what decode refuses


MALFORMED = [
    ({}, "missing field 'o'"),
    ({"o": "n1"}, "missing field 'e'"),
    ({"e": json.dumps(NODE_LOST)}, "missing field 'o'"),
    ({**entry(NODE_LOST), "x": "1"}, "unknown field 'x'"),
    ({"o": "n1", b"o": b"n2", "e": json.dumps(NODE_LOST)}, "given twice"),
    ({"o": "n1", "e": 5}, "must be text"),
    ({"o": None, "e": json.dumps(NODE_LOST)}, "must be text"),
    ({1: "n1", "e": json.dumps(NODE_LOST)}, "a field name must be text"),
    (entry(NODE_LOST, origin=""), "origin must be a node id"),
    (entry(NODE_LOST, origin="n" * 300), "origin must be a node id"),
    (entry(NODE_LOST, origin=b"\xff\xfe"), "not UTF-8"),
    (entry(b"\x80\x81{}"), "not UTF-8"),
    (entry(b"\x00\x01\x02 random bytes"), "not JSON"),
    (entry("{'type': 'NodeLost'}"), "not JSON"),
    (entry(json.dumps(NODE_LOST)[:-1]), "not JSON"),
    (entry("[1, 2]"), "must be a JSON object, not a list"),
    (entry('"NodeLost"'), "must be a JSON object, not a string"),
    (entry({"node": "n2", "now": 1.0}), "unknown event type None"),
    (entry({**NODE_LOST, "type": "NodeExploded"}), "unknown event type 'NodeExploded'"),
    (entry({**NODE_LOST, "type": 7}), "unknown event type 7"),
    (entry({**NODE_LOST, "extra": 1}), "NodeLost: unknown field 'extra'"),
    (entry({"type": "NodeLost", "now": 1.0}), "NodeLost: missing field node"),
    (entry({"type": "CallArrived", "call_id": "c1", "queue": "q", "tier": "t", "urgent": False, "now": 1}), "skills"),
    (entry('{"type": "NodeLost", "node": "n2", "now": NaN}'), "NaN: numbers must be finite"),
    (entry('{"type": "NodeLost", "node": "n2", "now": Infinity}'), "Infinity: numbers must be finite"),
    (entry('{"type": "NodeLost", "node": "n2", "now": -Infinity}'), "Infinity: numbers must be finite"),
    (entry('{"type": "NodeLost", "node": "n2", "now": 1e999}'), "NodeLost.now must be finite"),
    (entry('{"type": "NodeLost", "node": "n2", "now": 1' + "0" * 5000 + "}"), "malformed entry"),
    (entry('{"type": "NodeLost", "node": "n2", "now": ' + "[" * 20000 + "]" * 20000 + "}"), "nested too deeply"),
    (entry('{"type": "NodeLost", "node": "\\ud800", "now": 1}'), "lone surrogate"),
    (entry({**NODE_LOST, "now": "5"}), "NodeLost.now must be a number, not a string"),
    (entry({**NODE_LOST, "now": True}), "NodeLost.now must be a number, not a boolean"),
    (entry({**NODE_LOST, "node": 2}), "NodeLost.node must be a string, not a number"),
    (entry({**NODE_LOST, "node": None}), "NodeLost.node must be a string, not null"),
    (entry({"type": "SurgeSwitch", "on": 1, "cause": "manual", "now": 1}), "SurgeSwitch.on must be true or false"),
    (entry({"type": "SurgeSwitch", "on": True, "cause": "bored", "now": 1}), "SurgeSwitch.cause must be one of"),
    (entry({"type": "SurgeSwitch", "on": True, "cause": ["manual"], "now": 1}), "SurgeSwitch.cause must be one of"),
    (
        entry(
            {"type": "CallArrived", "call_id": "c", "queue": "q", "tier": "t", "skills": "fr", "urgent": 0, "now": 1}
        ),
        "skills must be a list",
    ),
    (
        entry(
            {"type": "CallArrived", "call_id": "c", "queue": "q", "tier": "t", "skills": [1], "urgent": False, "now": 1}
        ),
        r"skills\[0\] must be a string",
    ),
    (entry({"type": "PhoneBindings", "node": "n", "agent": "a", "bindings": {}, "now": 1}), "bindings must be a list"),
    (
        entry(
            {"type": "PhoneBindings", "node": "n", "agent": "a", "bindings": [["sip:x", ["udp", "h", 5060]]], "now": 1}
        ),
        "must be \\[contact",
    ),
    (
        entry({"type": "PhoneBindings", "node": "n", "agent": "a", "bindings": [["sip:x", "h:5060", 9]], "now": 1}),
        "peer must be",
    ),
    (
        entry(
            {"type": "PhoneBindings", "node": "n", "agent": "a", "bindings": [["sip:x", ["udp", "h", 0], 9]], "now": 1}
        ),
        "port must be a port number",
    ),
    (
        entry(
            {
                "type": "PhoneBindings",
                "node": "n",
                "agent": "a",
                "bindings": [["sip:x", ["udp", "h", 70000], 9]],
                "now": 1,
            }
        ),
        "port must be a port number",
    ),
    (
        entry(
            {
                "type": "PhoneBindings",
                "node": "n",
                "agent": "a",
                "bindings": [["sip:x", ["udp", "h", "5060"], 9]],
                "now": 1,
            }
        ),
        "port must be a port number",
    ),
    (
        entry(
            {
                "type": "PhoneBindings",
                "node": "n",
                "agent": "a",
                "bindings": [["sip:x", ["udp", "h", 5060], None]],
                "now": 1,
            }
        ),
        "expires_at must be a number",
    ),
    (
        entry(
            {"type": "PhoneBindings", "node": "n", "agent": "a", "bindings": [["s", ["u", "h", 1], 1]] * 65, "now": 1}
        ),
        "more than 64",
    ),
    (entry("x" * (MAX_EVENT_BYTES + 1)), f"over the cap of {MAX_EVENT_BYTES}"),
    ({"o": "n1", "e": b"x" * (MAX_EVENT_BYTES + 1)}, f"over the cap of {MAX_EVENT_BYTES}"),
]


@pytest.mark.parametrize(("fields", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_a_malformed_entry_is_a_wire_error_saying_what_is_wrong(fields: dict[object, object], message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode(fields)


def test_what_is_not_a_mapping_at_all_is_a_wire_error() -> None:
    for thing in (None, 5, "o=n1", [("o", "n1")], MappingProxyType({"o": "n1"})):
        with pytest.raises(WireError):
            decode(thing)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["o", "e", b"o", b"e", "x"]) | st.binary(max_size=4) | st.text(max_size=4) | st.integers()
field_values = (
    st.binary(max_size=64)
    | st.text(max_size=64)
    | json_values.map(lambda v: json.dumps(v))
    | json_values
    | st.integers()
)


@settings(max_examples=500, deadline=None)
@given(fields=st.dictionaries(field_names, field_values, max_size=4))
def test_arbitrary_fields_give_a_wire_error_or_an_event_and_nothing_else(fields: dict[object, object]) -> None:
    try:
        origin, event = decode(fields)
    except WireError:
        return
    assert decode(encode(origin, event)) == (origin, event)


@settings(max_examples=500, deadline=None)
@given(
    origin=ORIGINS,
    event=EVENTS,
    data=st.data(),
    how=st.sampled_from(["drop", "add", "replace", "type"]),
)
def test_a_damaged_event_gives_a_wire_error_or_a_well_formed_event(
    origin: str, event: object, data: st.DataObject, how: str
) -> None:
    body = json.loads(encode(origin, event)["e"])  # type: ignore[arg-type]
    key = data.draw(st.sampled_from(sorted(body)))
    if how == "drop":
        del body[key]
    elif how == "add":
        body[data.draw(st.text(max_size=8))] = data.draw(json_values)
    elif how == "replace":
        body[key] = data.draw(json_values)
    else:
        body["type"] = data.draw(st.sampled_from(ACCEPTED))
    try:
        got_origin, got = decode({"o": origin, "e": json.dumps(body)})
    except WireError:
        return
    assert got_origin == origin
    assert decode(encode(got_origin, got)) == (got_origin, got)


def test_only_an_entry_written_as_a_rebuild_gets_the_rebuilds_cap_and_not_beyond_it() -> None:
    # the head encode() writes earns the larger cap; over it, or written otherwise, the usual refusal
    over = '{"type":"Rebuild",' + '"x":"' + "y" * MAX_REBUILD_BYTES + '"}'
    with pytest.raises(WireError, match=f"over the cap of {MAX_REBUILD_BYTES}"):
        decode({"o": "n1", "e": over})
    spaced = '{"type": "Rebuild", "x": "' + "y" * (MAX_EVENT_BYTES + 1) + '"}'
    with pytest.raises(WireError, match=f"over the cap of {MAX_EVENT_BYTES}"):
        decode({"o": "n1", "e": spaced})
    junk = '{"type":"Rebuild",' + '"x":"' + "y" * (MAX_EVENT_BYTES * 4) + '"}'  # within the cap, but no Rebuild
    with pytest.raises(WireError, match="Rebuild: unknown field"):
        decode({"o": "n1", "e": junk})
    # the head, then another "type" (JSON's last key wins): a well-formed NodeLost gets no larger cap
    disguised = '{"type":"Rebuild","type":"NodeLost","node":"' + "n" * (MAX_EVENT_BYTES * 2) + '","now":1}'
    with pytest.raises(WireError, match=f"over the cap of {MAX_EVENT_BYTES}"):
        decode({"o": "n1", "e": disguised})

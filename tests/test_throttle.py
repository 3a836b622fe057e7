"""The throttle of failed logins (ivr/sip/throttle.py) on a stepped clock: windows, blocks, its bounded table."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.sip.throttle import AuthThrottle, ThrottleSettings, source_key


def fail(throttle: AuthThrottle, name: str, source: str, now: float, times: int = 1) -> None:
    for _ in range(times):
        throttle.failed("register", name, source, now)


def test_failures_add_up_within_the_window_only() -> None:
    t = AuthThrottle(ThrottleSettings(per_name=3, window=10.0))
    fail(t, "8001", "192.0.2.1", 0.0, 2)
    fail(t, "8001", "192.0.2.1", 10.0)  # the window has passed: a fresh count of one
    assert t.wait("8001", "192.0.2.1", 10.0) == 0.0
    fail(t, "8001", "192.0.2.1", 11.0, 2)
    assert t.wait("8001", "192.0.2.1", 11.0) == 60.0


def test_blocks_double_up_to_the_longest() -> None:
    t = AuthThrottle(ThrottleSettings(per_name=1, per_source=1000, block=10.0, max_block=35.0))
    now, lengths = 0.0, []
    for _ in range(5):
        fail(t, "8001", "192.0.2.1", now)
        lengths.append(t.wait("8001", "192.0.2.1", now))
        now += lengths[-1]
        assert t.wait("8001", "192.0.2.1", now) == 0.0
    assert lengths == [10.0, 20.0, 35.0, 35.0, 35.0]
    # failures while blocked do not lengthen the block
    fail(t, "8001", "192.0.2.1", now)
    fail(t, "8001", "192.0.2.1", now + 1.0)
    assert t.wait("8001", "192.0.2.1", now + 1.0) == 34.0


def test_idle_entries_are_forgotten_and_the_back_off_starts_again() -> None:
    s = ThrottleSettings(per_name=1, per_source=1000, window=10.0, block=5.0, max_block=20.0)
    t = AuthThrottle(s)
    fail(t, "8001", "192.0.2.1", 0.0)
    fail(t, "8001", "192.0.2.1", 5.0)
    assert len(t) == 3 and t.wait("8001", "192.0.2.1", 5.0) == 10.0
    later = 5.0 + s.window + 2 * s.max_block
    assert t.wait("8001", "192.0.2.1", later) == 0.0 and len(t) == 0
    fail(t, "8001", "192.0.2.1", later)
    assert t.wait("8001", "192.0.2.1", later) == 5.0


def test_the_table_is_capped_whatever_names_a_flood_makes_up() -> None:
    t = AuthThrottle(ThrottleSettings(max_entries=100))
    for i in range(1000):
        fail(t, f"name-{i}", f"10.0.{i // 250}.{i % 250}", 0.0)
    assert len(t) == 100 and t.evicted == 3 * 1000 - 100
    fail(t, "x" * 10_000, "192.0.2.1", 0.0)  # a huge name is cut to 64 characters in the key
    assert max(len(k[1]) for k in t._entries) <= 64


def test_ipv6_sources_count_by_their_64() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7" and source_key("192.0.2.7") == "192.0.2.7"
    t = AuthThrottle(ThrottleSettings(per_source=3))
    for i in range(3):
        fail(t, f"n{i}", f"2001:db8::{i + 1}", 0.0)  # a host hopping through its /64
    assert t.wait("other", "2001:db8::ffff", 0.0) == 60.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["8001", "8002", "ghost", ""]),
            st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "not an address", ""]),
            st.floats(0, 50, allow_nan=False),
            st.booleans(),
        ),
        max_size=60,
    )
)
def test_a_source_that_never_failed_is_never_refused(events: list[tuple[str, str, float, bool]]) -> None:
    t = AuthThrottle(ThrottleSettings(per_source=3, per_name=2, name_under_attack=4, max_entries=100))
    now = 0.0
    for name, source, step, ok in events:
        now += step
        if ok:
            t.succeeded(name, source)
        else:
            fail(t, name, source, now)
        assert 0.0 <= t.wait(name, source, now) <= t.settings.max_block
        assert t.wait(name, "198.51.100.99", now) == 0.0  # the real agent, elsewhere
        assert len(t) <= 100

"""The IVR flow interpreter, walked on a virtual clock: events in, actions out, no sockets."""

from __future__ import annotations

import copy
import copyreg
import inspect
import pickle
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.flow import actions as flow_actions
from ivr.flow import program as flow_program
from ivr.flow.actions import (
    CallbackDone,
    CallbackRequest,
    CallInfo,
    CancelTimer,
    Digit,
    FlowAction,
    FlowEvent,
    FlowState,
    Hangup,
    HungUp,
    Note,
    Play,
    PlaybackDone,
    QueueLeft,
    QueueRequest,
    Record,
    RecordingDone,
    SendText,
    Started,
    StartTimer,
    TimerExpired,
    Transfer,
)
from ivr.flow.interpreter import MAX_HOPS, in_window, start, step
from ivr.flow.program import Case, Program, compile_ivr, digit_prompts, number_prompts
from ivr.settings.config import ConfigError, parse_config
from ivr.settings.flows import DEMO_PATH, GroupMatcher

FLOWS = """\
ivr:
  prompts:
    {prompts}
  groups:
    vip: {{numbers: ["5550001"]}}
    spam: {{prefixes: ["0900"]}}
    outage: {{prefixes: ["555"]}}
  notices:
    outage: {{group: outage, prompt: notice_a}}
  blocklist_group: spam
  default_flow: main
  flow_by_number: {{"2000": numbers, "3000": loop}}
  flows:
    main:
      start: hours
      screen: screened
      nodes:
        hours:
          type: branch
          on: time_of_day
          cases:
            - {{from: "08:00", to: "20:00", days: [mon, tue, wed, thu, fri], next: surge}}
          default: closed
        closed: {{type: hangup, prompt: night, outcome: closed}}
        surge:
          type: branch
          on: surge
          cases: [{{on: true, next: busy}}]
          default: tier
        busy: {{type: play, prompts: [busy], next: tier}}
        tier:
          type: branch
          on: caller_group
          cases: [{{group: vip, next: vip_hello}}]
          default: menu
        vip_hello: {{type: play, prompts: [vip], next: menu}}
        menu:
          type: menu
          prompt: menu
          keys: {{1: hot, 2: pin, 3: message, 4: complaint, 5: agent, 6: cb, 7: operator, 8: your_number, 9: screened}}
          timeout: 4
          retries: 2
          invalid_prompt: invalid
          timeout_prompt: timeout
          on_failure: sorry
        hot: {{type: play, prompts: [answer], outcome: hotkey, text: "The answer.", next: bye}}
        pin:
          type: collect
          prompt: enter_pin
          var: pin
          max_digits: 4
          min_digits: 2
          timeout: 3
          retries: 1
          next: check_pin
          on_failure: bye
        check_pin:
          type: branch
          on: var:pin
          cases: [{{value: "1234", next: say_pin}}]
          default: bye
        say_pin: {{type: say_number, value: "var:pin", next: bye}}
        message: {{type: message, prompt: leave, max_seconds: 60, silence_seconds: 4, next: thanks}}
        thanks: {{type: play, prompts: [thanks], next: bye}}
        complaint: {{type: hangup, prompt: thanks, complaint: cleaning, outcome: complaint}}
        agent: {{type: queue, queue: general, prompt: hold}}
        cb: {{type: callback, queue: general, prompt: booked, next: bye}}
        operator: {{type: transfer, uri: "sip:operator@example.com"}}
        your_number: {{type: say_digits, prompt: you_are, value: caller, next: bye}}
        sorry: {{type: hangup, prompt: sorry}}
        screened: {{type: hangup, prompt: bye, outcome: screened}}
        bye: {{type: hangup, prompt: bye}}
    numbers:
      start: n
      screen: end
      nodes:
        n: {{type: say_number, value: "105", next: end}}
        end: {{type: hangup}}
    loop:
      start: s1
      screen: out
      nodes:
        s1: {{type: say_digits, value: caller, next: s2}}
        s2: {{type: branch, on: surge, cases: [{{on: true, next: out}}], default: s1}}
        out: {{type: hangup}}
"""
PROMPTS = "night busy vip menu invalid timeout answer enter_pin leave thanks hold booked you_are sorry bye notice_a"
CONFIG = FLOWS.format(prompts="\n    ".join(f"{p}: {{text: {p}}}" for p in PROMPTS.split()))

PROGRAM = compile_ivr(parse_config(CONFIG, "flows.yaml").ivr)
DEMO = compile_ivr(parse_config(DEMO_PATH.read_text(), str(DEMO_PATH)).ivr)
MONDAY_10AM = {"local_time_minutes": 600, "weekday": 0}


def info(
    caller: str = "5557777",
    called: str = "1000",
    groups: frozenset[str] = frozenset(),
    notices: tuple[str, ...] = (),
    surge: bool = False,
    local_time_minutes: int = 600,
    weekday: int = 0,
) -> CallInfo:
    return CallInfo(caller, called, groups, notices, surge, local_time_minutes, weekday)


class Call:
    """Plays the executor's part on a virtual clock: tracks the prompt playing and the armed timers."""

    def __init__(self, program: Program, call_info: CallInfo) -> None:
        self.now = 0.0
        self.playing: Play | None = None
        self.timers: dict[str, float] = {}
        self.log: list[FlowAction] = []
        self.state, actions = start(program, call_info, self.now)
        self.last = self._apply(actions)

    def _apply(self, actions: list[FlowAction]) -> list[FlowAction]:
        for a in actions:
            match a:
                case Play():
                    self.playing = a
                case StartTimer(name=name, seconds=seconds):
                    self.timers[name] = self.now + seconds
                case CancelTimer(name=name):
                    self.timers.pop(name, None)
        self.log.extend(actions)
        self.last = actions
        return actions

    def send(self, event: FlowEvent) -> list[FlowAction]:
        self.state, actions = step(self.state, event, self.now)
        return self._apply(actions)

    def played(self) -> list[FlowAction]:
        """The prompt playing now has been sent to the end."""
        assert self.playing is not None, "nothing is playing"
        play, self.playing = self.playing, None
        self.now += 2.0
        return self.send(PlaybackDone(play.play_id))

    def press(self, keys: str) -> list[FlowAction]:
        actions: list[FlowAction] = []
        for key in keys:
            if self.playing is not None and self.playing.barge_in:
                self.playing = None
            self.now += 0.3
            actions += self.send(Digit(key))
        return actions

    def wait(self, seconds: float) -> list[FlowAction]:
        """Let the clock run; timers that fall due fire in order."""
        self.now += seconds
        actions: list[FlowAction] = []
        for name, due in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if due <= self.now:
                del self.timers[name]
                actions += self.send(TimerExpired(name))
        return actions

    def notes(self, kind: str) -> list[str]:
        return [a.value for a in self.log if isinstance(a, Note) and a.kind == kind]

    @property
    def prompts(self) -> tuple[str, ...]:
        assert self.playing is not None
        return self.playing.prompts


def to_menu(call_info: CallInfo | None = None, program: Program = PROGRAM) -> Call:
    call = Call(program, call_info or info())
    assert call.prompts == ("menu",)
    return call


# -- arriving at the menu ---------------------------------------------------------------


def test_plain_caller_goes_straight_to_the_menu() -> None:
    call = Call(PROGRAM, info())
    assert call.last == [
        Note("node", "hours"),
        Note("node", "surge"),
        Note("node", "tier"),
        Note("node", "menu"),
        Play(("menu",), 1, barge_in=True),
    ]
    assert call.state.node == "menu" and not call.state.finished


def test_notice_plays_before_the_menu_only_for_the_group() -> None:
    groups_of = GroupMatcher(parse_config(CONFIG, "flows.yaml").ivr.groups)
    # the router builds CallInfo.notices from the notice board for the caller's groups
    affected = info(caller="5551234", groups=groups_of("5551234"), notices=("notice_a",))
    assert affected.groups == {"outage"}
    call = Call(PROGRAM, affected)
    assert call.last == [Note("notice", "notice_a"), Play(("notice_a",), 1, barge_in=False)]
    assert call.press("1") == [Note("key", "1")]  # no barge-in on a notice, and no menu yet
    call.played()
    assert call.prompts == ("menu",)
    assert call.notes("notice") == ["notice_a"]

    other = Call(PROGRAM, info(caller="4441234", groups=groups_of("4441234")))
    assert other.notes("notice") == [] and other.prompts == ("menu",)


def test_several_notices_play_in_order() -> None:
    call = Call(PROGRAM, info(notices=("notice_a", "busy")))
    assert call.prompts == ("notice_a",)
    call.played()
    assert call.last == [Note("notice", "busy"), Play(("busy",), 2)]
    call.played()
    assert call.prompts == ("menu",)


def test_blocklisted_caller_is_screened_before_anything_else() -> None:
    call = Call(PROGRAM, info(caller="0900123", groups=frozenset({"spam", "outage"}), notices=("notice_a",)))
    assert call.last == [
        Note("screened", "blocklist"),
        Note("node", "screened"),
        Note("outcome", "screened"),
        Play(("bye",), 1),
    ]
    assert call.played() == [Hangup()]
    assert call.state.finished and call.state.outcome == "screened"


def test_sales_key_reaches_the_same_polite_goodbye() -> None:
    call = to_menu()
    call.played()
    call.press("9")
    assert call.notes("outcome") == ["screened"] and call.prompts == ("bye",)


# -- branches ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "weekday", "open_"),
    [(600, 0, True), (480, 4, True), (479, 0, False), (1200, 0, False), (600, 5, False), (600, 6, False)],
)
def test_branch_on_time_of_day(minutes: int, weekday: int, open_: bool) -> None:
    call = Call(PROGRAM, info(local_time_minutes=minutes, weekday=weekday))
    if open_:
        assert call.prompts == ("menu",)
    else:
        assert call.notes("node") == ["hours", "closed"] and call.prompts == ("night",)
        call.played()
        assert call.state.outcome == "closed" and call.state.finished


def test_time_window_past_midnight() -> None:
    night = Case(next="x", start=22 * 60, end=6 * 60)
    assert in_window(night, 23 * 60, 0) and in_window(night, 0, 0) and in_window(night, 5 * 60 + 59, 0)
    assert not in_window(night, 6 * 60, 0) and not in_window(night, 12 * 60, 0)
    weekend = Case(next="x", start=0, end=1440, days=frozenset({5, 6}))
    assert in_window(weekend, 0, 5) and in_window(weekend, 1439, 6) and not in_window(weekend, 600, 4)


def test_branch_on_surge() -> None:
    call = Call(PROGRAM, info(surge=True))
    assert call.notes("node") == ["hours", "surge", "busy"] and call.prompts == ("busy",)
    call.played()
    assert call.prompts == ("menu",)


def test_branch_on_caller_group() -> None:
    call = Call(PROGRAM, info(caller="5550001", groups=frozenset({"vip"})))
    assert call.prompts == ("vip",)
    call.played()
    assert call.prompts == ("menu",)


# -- menus ----------------------------------------------------------------------------------


def test_hotkey_plays_the_answer_and_texts_it() -> None:
    call = to_menu()
    call.played()
    timer = call.state.play_id
    assert call.last == [StartTimer(f"input:{timer}", 4.0)]
    actions = call.press("1")
    assert actions == [
        Note("key", "1"),
        CancelTimer(f"input:{timer}"),
        Note("node", "hot"),
        Note("outcome", "hotkey"),
        SendText("5557777", "The answer.", "hotkey"),
        Play(("answer",), 2),
    ]
    call.played()
    assert call.prompts == ("bye",)
    assert call.played() == [Hangup()]
    assert call.state.outcome == "hotkey"  # the goodbye keeps the hotkey outcome


def test_a_key_during_the_menu_prompt_barges_in() -> None:
    call = to_menu()
    assert call.press("1")[:2] == [Note("key", "1"), Note("node", "hot")]  # no timer was armed yet


def test_no_text_to_a_caller_without_a_number() -> None:
    call = to_menu(info(caller="anonymous"))
    call.press("1")
    assert not [a for a in call.log if isinstance(a, SendText)]
    assert call.notes("text_skipped") == ["hotkey"]


def test_invalid_key_then_retry() -> None:
    call = to_menu()
    call.played()
    assert call.press("0")[1:] == [CancelTimer("input:1"), Play(("invalid", "menu"), 2, barge_in=True)]
    assert call.state.attempts == 1
    call.played()
    call.press("1")
    assert call.state.node == "hot"


def test_timeouts_retry_then_on_failure() -> None:
    call = to_menu()
    call.played()
    assert call.wait(3.9) == []
    assert call.wait(0.1) == [Play(("timeout", "menu"), 2, barge_in=True)]
    call.played()
    assert call.wait(4) == [Play(("timeout", "menu"), 3, barge_in=True)]
    call.played()
    assert call.wait(4) == [Note("node", "sorry"), Play(("sorry",), 4)]
    assert call.played() == [Note("outcome", "completed"), Hangup()]
    assert call.state.finished


def test_invalid_keys_and_timeouts_share_the_retries() -> None:
    call = to_menu()
    call.press("0")
    call.played()
    call.wait(4)
    call.played()
    call.press("#")
    assert call.state.node == "sorry"


def test_menu_without_on_failure_hangs_up_as_menu_failed() -> None:
    text = (
        "ivr:\n  prompts: {m: {text: m}}\n  flows:\n    f:\n      start: m\n      nodes:\n"
        "        m: {type: menu, prompt: m, keys: {1: end}, retries: 0}\n        end: {type: hangup}\n"
    )
    call = Call(compile_ivr(parse_config(text, "x.yaml").ivr), info())
    call.played()
    assert call.wait(5) == [Note("outcome", "menu_failed"), Hangup()]
    assert call.state.finished and call.state.outcome == "menu_failed"


# -- the other nodes --------------------------------------------------------------------------


def test_leave_a_message() -> None:
    call = to_menu()
    call.press("3")
    assert call.prompts == ("leave", "beep")
    assert call.played() == [Record("message", 60.0, 4.0)]
    actions = call.send(RecordingDone("/var/lib/frontdesk/messages/abc.wav", 14.2, "silence"))
    assert actions == [
        Note("message", "/var/lib/frontdesk/messages/abc.wav"),
        Note("node", "thanks"),
        Play(("thanks",), 3),
    ]


def test_message_cut_by_hang_up_is_kept() -> None:
    call = to_menu()
    call.press("3")
    call.played()
    assert call.send(RecordingDone("/m/1.wav", 3.0, "hangup")) == [Note("message", "/m/1.wav")]
    assert call.send(HungUp()) == [Note("outcome", "caller_hung_up_at:message")]
    assert call.state.finished


def test_complaint_category_is_noted() -> None:
    call = to_menu()
    call.press("4")
    assert call.last[1:] == [
        Note("node", "complaint"),
        Note("complaint", "cleaning"),
        Note("outcome", "complaint"),
        Play(("thanks",), 2),
    ]
    assert call.played() == [Hangup()]


def test_queue_placeholder() -> None:
    call = to_menu()
    call.press("5")
    assert call.last[1:] == [
        Note("node", "agent"),
        QueueRequest("general"),
        Note("outcome", "queued"),
        Play(("hold",), 2),
    ]
    assert call.played() == [Hangup()]
    assert call.state.outcome == "queued"


def test_live_queue_waits_for_the_agent_or_goes_on_at_the_overflow_node() -> None:
    text = (
        "ivr:\n"
        "  prompts: {m: {text: m}, hold: {text: hold}, busy: {text: busy}}\n"
        "  flows:\n"
        "    f:\n"
        "      start: m\n"
        "      nodes:\n"
        "        m: {type: menu, prompt: m, keys: {1: q, 2: q2}}\n"
        "        q: {type: queue, queue: sales, prompt: hold, overflow: {message: busy_msg}, next: bye}\n"
        "        q2: {type: queue, queue: sales}\n"
        "        busy_msg: {type: play, prompts: [busy], next: bye}\n"
        "        bye: {type: hangup}\n"
        "queues: {sales: {}}\n"
    )
    program = compile_ivr(parse_config(text, "x.yaml").ivr)
    live = replace(info(), queues=True)
    # connected while the holding prompt still plays: the flow ends, no hang-up (the call is the agent's)
    call = Call(program, live)
    call.press("1")
    assert call.last[1:] == [Note("node", "q"), QueueRequest("sales"), Note("outcome", "queued"), Play(("hold",), 2)]
    assert call.send(QueueLeft("connected")) == [Note("outcome", "agent")]
    assert call.state.finished
    # the prompt ends: the caller waits for QueueLeft; keys do nothing
    call = Call(program, live)
    call.press("1")
    assert call.played() == []
    assert call.state.waiting == "queued"
    assert call.press("5") == [Note("key", "5")]
    assert call.send(QueueLeft("message")) == [
        Note("overflow", "message"),
        Note("node", "busy_msg"),
        Play(("busy",), 3),
    ]
    # a target with no node of its own goes to next; with no next the call ends
    call = Call(program, live)
    call.press("1")
    assert call.send(QueueLeft("peak_shaving"))[:2] == [Note("overflow", "peak_shaving"), Note("node", "bye")]
    call = Call(program, live)
    call.press("2")
    assert call.last[1:] == [Note("node", "q2"), QueueRequest("sales"), Note("outcome", "queued")]
    assert call.state.waiting == "queued"
    assert call.send(QueueLeft("self_service")) == [Note("overflow", "self_service"), Hangup()]
    # QueueLeft anywhere but at a queue node is ignored
    call = Call(program, live)
    assert call.send(QueueLeft("connected")) == []


def test_queue_overflow_targets_must_be_nodes() -> None:
    text = (
        "ivr:\n"
        "  prompts: {m: {text: m}}\n"
        "  flows:\n"
        "    f:\n"
        "      start: q\n"
        "      nodes:\n"
        "        q: {type: queue, queue: sales, overflow: {message: nowhere}}\n"
        "queues: {sales: {}}\n"
    )
    with pytest.raises(ConfigError, match=r"x.yaml:7: .*overflow.*nowhere"):
        parse_config(text, "x.yaml")
    # and the queue itself must be one the config defines
    text = text.replace("{message: nowhere}", "{}").replace("queues: {sales: {}}", "queues: {support: {}}")
    with pytest.raises(ConfigError, match=r"x.yaml:7: ivr.flows.f.nodes.q.queue: unknown queue 'sales'"):
        parse_config(text, "x.yaml")


def test_callback_placeholder() -> None:
    call = to_menu()
    call.press("6")
    assert call.last[1:] == [
        Note("node", "cb"),
        CallbackRequest("general", "5557777"),
        Note("outcome", "callback_requested"),
        Play(("booked",), 2),
    ]
    call.played()
    assert call.prompts == ("bye",)


def test_live_callback_is_confirmed_only_after_the_store_answers() -> None:
    text = (
        "ivr:\n"
        "  prompts: {m: {text: m}, enter: {text: enter}, keep: {text: keep}, bye: {text: bye}}\n"
        "  flows:\n"
        "    f:\n"
        "      start: m\n"
        "      nodes:\n"
        "        m: {type: menu, prompt: m, keys: {1: book, 2: other, 3: drop}}\n"
        "        book: {type: callback, queue: sales, exists: has_one, next: bye}\n"
        "        other: {type: collect, prompt: enter, var: number, min_digits: 4, max_digits: 12, next: book_other}\n"
        "        book_other: {type: callback, queue: sales, number: 'var:number', slot: morning, next: bye}\n"
        "        has_one: {type: menu, prompt: keep, keys: {1: bye, 2: drop}}\n"
        "        drop: {type: callback, queue: sales, cancel: true, next: bye}\n"
        "        bye: {type: hangup, prompt: bye}\n"
        "queues: {sales: {}}\n"
    )
    program = compile_ivr(parse_config(text, "x.yaml").ivr)
    live = replace(info(), callbacks=True)
    call = Call(program, live)
    call.press("1")
    # the request, and silence: nothing is promised before the booking is committed
    assert call.last[1:] == [Note("node", "book"), CallbackRequest("sales", "5557777", "asap", False)]
    assert call.playing is None and call.state.waiting == "booking"
    assert call.press("9") == [Note("key", "9")]
    assert call.send(CallbackDone("booked", 40)) == [
        Note("outcome", "callback_booked"),
        Play(("callback_booked", "callback_within", "num_40", "queue_minutes"), 2),
    ]
    assert call.played()[:2] == [Note("node", "bye"), Play(("bye",), 3)]
    # long promises are said in hours
    call = Call(program, live)
    call.press("1")
    assert call.send(CallbackDone("booked", 190))[1] == Play(
        ("callback_booked", "callback_within", "num_4", "callback_hours"), 2
    )
    # a caller who already has one goes to `exists`, and can cancel it there
    call = Call(program, live)
    call.press("1")
    assert call.send(CallbackDone("exists")) == [
        Note("outcome", "callback_exists"),
        Note("node", "has_one"),
        Play(("keep",), 2, True),
    ]
    call.press("2")
    assert call.last[-1] == CallbackRequest("sales", "5557777", "asap", True)
    assert call.send(CallbackDone("cancelled"))[-1] == Play(("callback_cancelled",), 3)
    # a number keyed in, and a slot
    call = Call(program, live)
    call.press("2")
    call.press("0201234567#")
    assert call.last[-1] == CallbackRequest("sales", "0201234567", "morning", False)
    assert call.send(CallbackDone("failed"))[0] == Note("outcome", "callback_failed")
    assert call.prompts == ("callback_failed",)
    # the answer to a request no longer pending is ignored
    assert call.send(CallbackDone("booked", 5)) == []


def test_a_booking_that_failed_takes_the_failed_branch() -> None:
    text = (
        "ivr:\n"
        "  prompts: {m: {text: m}, offer: {text: offer}, leave: {text: leave}, bye: {text: bye}}\n"
        "  flows:\n"
        "    f:\n"
        "      start: m\n"
        "      nodes:\n"
        "        m: {type: menu, prompt: m, keys: {1: book, 2: plain}}\n"
        "        book: {type: callback, queue: sales, failed: offer, next: bye}\n"
        "        plain: {type: callback, queue: sales, next: bye}\n"
        "        offer: {type: menu, prompt: offer, keys: {1: message}, retries: 0, on_failure: bye}\n"
        "        message: {type: message, prompt: leave, max_seconds: 30, silence_seconds: 3, next: bye}\n"
        "        bye: {type: hangup, prompt: bye}\n"
        "queues: {sales: {}}\n"
    )
    program = compile_ivr(parse_config(text, "x.yaml").ivr)
    live = replace(info(), callbacks=True)
    # failed: the caller hears it could not be booked, then the `failed` node, where a message can be left
    call = Call(program, live)
    call.press("1")
    assert call.send(CallbackDone("failed")) == [Note("outcome", "callback_failed"), Play(("callback_failed",), 2)]
    assert call.played() == [Note("node", "offer"), Play(("offer",), 3, True)]
    call.press("1")
    assert call.prompts == ("leave", "beep")
    assert call.played() == [Record("message", 30, 3)]
    assert call.send(RecordingDone("/tmp/m.wav", 4.0, "key"))[:2] == [
        Note("message", "/tmp/m.wav"),
        Note("node", "bye"),
    ]
    # booked: `next`, as before
    call = Call(program, live)
    call.press("1")
    call.send(CallbackDone("booked", 10))
    assert call.played()[:2] == [Note("node", "bye"), Play(("bye",), 3)]
    # "exists" and "none" are answers, not failures: `next`
    call = Call(program, live)
    call.press("1")
    call.send(CallbackDone("none"))
    assert call.played()[0] == Note("node", "bye")
    # a node without `failed` goes on to `next` after the sorry prompt
    call = Call(program, live)
    call.press("2")
    assert call.send(CallbackDone("failed"))[1] == Play(("callback_failed",), 2)
    assert call.played()[0] == Note("node", "bye")


def test_transfer() -> None:
    call = to_menu()
    call.press("7")
    assert call.last[1:] == [
        Note("node", "operator"),
        Note("transfer", "sip:operator@example.com"),
        Note("outcome", "transferred"),
        Transfer("sip:operator@example.com"),
    ]
    assert call.state.finished


def test_say_digits_reads_the_caller_number() -> None:
    call = to_menu(info(caller="+4420*7#"))
    call.press("8")
    assert call.prompts == (
        "you_are",
        "digit_4",
        "digit_4",
        "digit_2",
        "digit_0",
        "digit_star",
        "digit_7",
        "digit_hash",
    )


def test_say_digits_with_nothing_to_say_goes_on() -> None:
    call = to_menu(info(caller="anonymous"))
    call.press("8")
    assert call.notes("node")[-2:] == ["your_number", "bye"] and call.prompts == ("bye",)


def test_say_number() -> None:
    call = Call(PROGRAM, info(called="2000"))
    assert call.state.flow == "numbers"
    assert call.prompts == ("num_1", "num_hundred", "num_5")


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "0"),
        (7, "7"),
        (13, "13"),
        (20, "20"),
        (42, "40 2"),
        (100, "1 hundred"),
        (105, "1 hundred 5"),
        (999, "9 hundred 90 9"),
        (1000, "1 thousand"),
        (2019, "2 thousand 19"),
        (12345, "12 thousand 3 hundred 40 5"),
        (999999, "9 hundred 90 9 thousand 9 hundred 90 9"),
    ],
)
def test_number_prompts(n: int, words: str) -> None:
    assert number_prompts(n) == tuple(f"num_{w}" for w in words.split())


def test_big_numbers_and_digits() -> None:
    assert number_prompts(1_000_000) == ("digit_1",) + ("digit_0",) * 6
    assert digit_prompts("+1 (555) 0*#x") == (
        "digit_1",
        "digit_5",
        "digit_5",
        "digit_5",
        "digit_0",
        "digit_star",
        "digit_hash",
    )


# -- collecting digits ---------------------------------------------------------------------


def test_collect_up_to_max_digits_then_branch_on_the_value() -> None:
    call = to_menu()
    call.press("2")
    assert call.last[-1] == Play(("enter_pin",), 2, barge_in=True)
    call.press("123")
    assert call.state.digits == "123" and call.state.node == "pin"
    call.press("4")
    assert call.state.vars == {"pin": "1234"}
    assert call.notes("node")[-2:] == ["check_pin", "say_pin"]
    assert call.prompts == ("num_1", "num_thousand", "num_2", "num_hundred", "num_30", "num_4")
    assert call.notes("key") == ["2", "1", "2", "3", "4"]


def test_collect_ends_with_the_terminator_or_a_pause() -> None:
    call = to_menu()
    call.press("2")
    call.press("12#")
    assert call.state.vars == {"pin": "12"} and call.prompts == ("bye",)

    call = to_menu()
    call.press("2")
    call.played()
    call.press("77")
    assert call.wait(3) and call.state.vars == {"pin": "77"}


def test_collect_too_short_retries_then_fails() -> None:
    call = to_menu()
    call.press("2")
    call.press("1#")
    assert call.prompts == ("enter_pin",) and call.state.attempts == 1 and call.state.digits == ""
    call.played()
    call.wait(3)
    assert call.notes("node")[-1] == "bye"  # on_failure
    assert "pin" not in call.state.vars


def test_inter_digit_timer_restarts_with_each_key() -> None:
    call = to_menu()
    call.press("2")
    call.press("1")
    call.wait(2)
    call.press("2")
    assert call.wait(2) == []
    assert call.state.digits == "12"
    call.wait(1)
    assert call.state.vars == {"pin": "12"}


# -- stale and late events ---------------------------------------------------------------


def test_stale_and_unexpected_events_are_ignored() -> None:
    call = to_menu()
    call.press("0")  # replays: play 2 replaces play 1
    state = call.state
    for event in (PlaybackDone(1), TimerExpired("input:1"), TimerExpired("input:2"), RecordingDone("/x.wav", 1, "key")):
        assert call.send(event) == []
        assert call.state == state
    assert call.send(Started(info())) == []


def test_hung_up_is_recorded_where_and_ends_the_flow() -> None:
    call = to_menu()
    assert call.send(HungUp()) == [Note("outcome", "caller_hung_up_at:menu")]
    assert call.state.finished
    for event in (PlaybackDone(call.state.play_id), Digit("1"), HungUp(), TimerExpired("input:1")):
        assert call.send(event) == []


def test_hung_up_during_a_notice() -> None:
    call = Call(PROGRAM, info(notices=("notice_a",)))
    assert call.send(HungUp()) == [Note("outcome", "caller_hung_up_at:notice")]


def test_events_before_started_are_ignored() -> None:
    state = FlowState(flow="main", program=PROGRAM.flows["main"])
    assert step(state, Digit("1"), 0.0) == (state, [])
    state, actions = step(state, HungUp(), 0.0)
    assert actions == [Note("outcome", "caller_hung_up_at:start")] and state.finished


def test_step_does_not_change_the_state_it_is_given() -> None:
    call = to_menu()
    call.press("2")
    state = call.state
    frozen = copy.deepcopy(state)
    step(state, Digit("5"), 1.0)
    step(state, HungUp(), 1.0)
    assert state == frozen and state.digits == frozen.digits and not state.finished


def test_a_copied_state_has_every_field_and_its_own_lists() -> None:
    """``FlowState.copied`` writes its fields out: one added later and not copied fails here."""
    state = FlowState(
        flow="main",
        node="menu",
        info=info(),
        play_id=7,
        attempts=2,
        digits="12",
        vars={"account": "42"},
        pending=["notice_a"],
        finished=True,
        program=PROGRAM.flows["main"],
        waiting="input",
        outcome="menu",
    )
    blank = FlowState("x")
    assert [f.name for f in dataclass_fields(FlowState) if getattr(state, f.name) == getattr(blank, f.name)] == []
    again = state.copied()
    assert again == state and again.program is state.program and again.info is state.info
    assert again.vars is not state.vars and again.pending is not state.pending


def test_the_flows_values_copy_and_pickle_as_themselves_compiled_or_not() -> None:
    """Copies and pickles of a program and its events rebuild through the constructor (compiled, a frozen
    dataclass refuses the default way of setting each field on a blank instance)."""
    values = [
        cls
        for module in (flow_actions, flow_program)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if is_dataclass(cls) and cls.__module__ == module.__name__ and cls is not FlowState
    ]
    assert len(values) == 34 and all(cls in copyreg.dispatch_table for cls in values)  # a new one is registered too
    samples = [DEMO, PROGRAM, info(), Started(info()), RecordingDone("x.wav", 2.5, "key"), CallbackDone("booked", 5)]
    for value in samples:
        assert copy.deepcopy(value) == value == pickle.loads(pickle.dumps(value)), type(value)
    call = to_menu()
    call.press("2")
    again = copy.deepcopy(call.state)
    assert again == call.state and again.program == call.state.program and again.info is not call.state.info


def test_a_loop_of_instant_nodes_is_cut() -> None:
    call = Call(PROGRAM, info(caller="anonymous", called="3000"))
    assert call.notes("node")[:3] == ["s1", "s2", "s1"]
    assert len(call.notes("node")) == MAX_HOPS
    assert call.last[-2:] == [Note("outcome", "flow_loop"), Hangup()]
    assert call.state.finished


# -- the demo -------------------------------------------------------------------------------


def demo_call(**changes: object) -> Call:
    return Call(DEMO, replace(info(), **changes))  # type: ignore[arg-type]


def test_demo_greets_at_once_then_menu() -> None:
    call = demo_call()
    assert call.prompts == ("welcome",)
    call.played()
    assert call.prompts == ("main_menu",)


def test_demo_notice_first_for_the_fault_area() -> None:
    call = demo_call(caller="5551234", groups=frozenset({"fault_area"}), notices=("fault_notice",))
    assert call.prompts == ("fault_notice",)
    call.played()
    assert call.prompts == ("welcome",)


def test_demo_surge_adds_the_busy_message() -> None:
    call = demo_call(surge=True)
    call.played()
    assert call.prompts == ("busy_lines",)
    # its keys work at once (barge-in): 2, the hot topic
    call.press("2")
    assert call.prompts == ("hot_topic_answer",)
    # silence leads on to the main menu
    call = demo_call(surge=True)
    call.played()
    call.played()
    call.wait(1.5)
    assert call.prompts == ("main_menu",)


def test_demo_blocklist() -> None:
    call = demo_call(caller="6660000", groups=frozenset({"blocked"}))
    assert call.prompts == ("screened_goodbye",)
    assert call.notes("screened") == ["blocklist"]


@pytest.mark.parametrize(
    ("keys", "prompts", "outcome"),
    [
        ("1", ("hold_for_agent",), "queued"),
        ("2", ("hot_topic_answer",), "hotkey"),
        ("3", ("self_service_info",), "self_service"),
        ("4", ("leave_message_intro", "beep"), ""),
        ("9", ("screened_goodbye",), "screened"),
        ("0", ("your_number_is", "digit_5", "digit_5", "digit_5", "digit_7", "digit_7", "digit_7", "digit_7"), ""),
    ],
)
def test_demo_main_menu(keys: str, prompts: tuple[str, ...], outcome: str) -> None:
    call = demo_call()
    call.played()
    call.press(keys)
    assert call.prompts == prompts
    assert call.state.outcome == outcome


def test_demo_texts_the_hot_topic_and_the_self_service_link() -> None:
    for key, reason, content in (("2", "hotkey", "mobile data"), ("3", "self_service", "https://")):
        call = demo_call()
        call.played()
        call.press(key)
        texts = [a for a in call.log if isinstance(a, SendText)]
        assert len(texts) == 1 and texts[0].to == "5557777" and texts[0].reason == reason
        assert content in texts[0].body
        # R3: then "anything else?", and time for the caller to hang up first
        call.played()
        assert call.prompts == ("anything_else",)
        call.played()
        call.wait(6)
        assert call.prompts == ("goodbye",)


@pytest.mark.parametrize(
    ("key", "category"),
    [("1", "security"), ("2", "cleaning"), ("3", "maintenance"), ("4", "staff_attitude"), ("5", "other")],
)
def test_demo_complaints(key: str, category: str) -> None:
    call = demo_call()
    call.played()
    call.press("5")
    assert call.prompts == ("complaint_menu",)
    call.press(key)
    assert call.notes("complaint") == [category]
    assert call.prompts == ("complaint_recorded",)
    call.played()
    assert call.state.finished and call.state.outcome == "complaint"


def test_demo_message_then_back_to_the_menu() -> None:
    call = demo_call()
    call.played()
    call.press("4")
    call.played()
    assert call.last == [Record("message", 120.0, 5.0)]
    call.send(RecordingDone("/m/2.wav", 30.0, "key"))
    assert call.notes("message") == ["/m/2.wav"] and call.prompts == ("message_saved",)
    call.played()
    call.played()
    call.press("*")
    assert call.prompts == ("main_menu",)


# -- property: any event sequence ---------------------------------------------------------

KEYS = "0123456789*#"

_moves = st.one_of(
    st.tuples(st.just("done")),  # the prompt playing now ends
    st.tuples(st.just("stale"), st.integers(0, 40)),  # a PlaybackDone with any id
    st.tuples(st.just("timer")),  # the armed input timer fires
    st.tuples(st.just("timer_any"), st.integers(0, 40)),
    st.tuples(st.just("key"), st.sampled_from(KEYS)),
    st.tuples(st.just("rec"), st.sampled_from(["max_length", "silence", "key", "hangup"])),
    st.tuples(st.just("started")),
)

_infos = st.builds(
    CallInfo,
    caller=st.sampled_from(["5557777", "5550001", "0900123", "anonymous", "+4420", ""]),
    called=st.sampled_from(["1000", "2000", "3000", ""]),
    groups=st.frozensets(st.sampled_from(["vip", "spam", "outage", "fault_area", "blocked"])),
    notices=st.lists(st.sampled_from(["notice_a", "busy", "fault_notice"]), max_size=3).map(tuple),
    surge=st.booleans(),
    local_time_minutes=st.integers(0, 1439),
    weekday=st.integers(0, 6),
)


def _event(move: tuple[object, ...], state: FlowState) -> FlowEvent:
    match move:
        case ("done",):
            return PlaybackDone(state.play_id)
        case ("stale", int(n)):
            return PlaybackDone(n)
        case ("timer",):
            return TimerExpired(f"input:{state.play_id}")
        case ("timer_any", int(n)):
            return TimerExpired(f"input:{n}")
        case ("key", str(key)):
            return Digit(key)
        case ("rec", str(reason)):
            return RecordingDone("/m/x.wav", 1.0, reason)
    assert state.info is not None
    return Started(state.info)


@settings(max_examples=300, deadline=None)
@given(program=st.sampled_from([PROGRAM, DEMO]), call_info=_infos, moves=st.lists(_moves, max_size=60))
def test_random_event_sequences_never_raise_and_end_after_hung_up(
    program: Program, call_info: CallInfo, moves: list[tuple[object, ...]]
) -> None:
    now = 0.0
    state, actions = start(program, call_info, now)
    last_play = 0
    for move in moves:
        now += 0.5
        was_finished = state.finished
        before = copy.deepcopy(state)
        new, actions = step(state, _event(move, state), now)
        assert state == before  # the given state is never changed
        if was_finished:
            assert actions == []
        for a in actions:
            if isinstance(a, Play):
                assert a.play_id > last_play and a.prompts
                last_play = a.play_id
        if any(isinstance(a, Hangup | Transfer) for a in actions):
            assert new.finished
        state = new
    state, actions = step(state, HungUp(), now + 1)
    assert state.finished
    assert step(state, Digit("1"), now + 2)[1] == []


def test_nodes_without_prompts_act_at_once() -> None:
    text = (
        "ivr:\n"
        "  prompts: {m: {text: m}, connecting: {text: connecting}}\n"
        "  flows:\n"
        "    f:\n"
        "      start: m\n"
        "      nodes:\n"
        "        m: {type: menu, prompt: m, keys: {1: q, 2: cb, 3: t}}\n"
        "        q: {type: queue, queue: sales}\n"
        "        cb: {type: callback, queue: sales, outcome: callback_booked}\n"
        "        t: {type: transfer, uri: 'tel:+15550100', prompt: connecting}\n"
        "queues: {sales: {}}\n"
    )
    program = compile_ivr(parse_config(text, "x.yaml").ivr)
    call = Call(program, info())
    assert call.press("1")[1:] == [Note("node", "q"), QueueRequest("sales"), Note("outcome", "queued"), Hangup()]
    call = Call(program, info())
    assert call.press("2")[1:] == [
        Note("node", "cb"),
        Note("outcome", "callback_booked"),
        CallbackRequest("sales", "5557777"),
        Hangup(),
    ]
    call = Call(program, info())
    call.press("3")
    assert call.prompts == ("connecting",) and not call.state.finished
    assert call.played() == [
        Note("transfer", "tel:+15550100"),
        Note("outcome", "transferred"),
        Transfer("tel:+15550100"),
    ]
    assert call.state.finished

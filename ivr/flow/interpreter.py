"""The IVR flow interpreter: ``step(state, event, now) -> (state, actions)``, no I/O.

Theory of operation
-------------------
A call's :class:`~ivr.flow.actions.FlowState` carries its compiled flow
(``state.program``), the node it is at, and what that node waits for
(``state.waiting``):

==============  =================================================  ==========================
waiting         left by                                            nodes
==============  =================================================  ==========================
``playback``    ``PlaybackDone`` with the current ``play_id``      every node that plays
``input``       ``Digit`` or ``TimerExpired("input:<play_id>")``    menu, collect
``recording``   ``RecordingDone``                                  message
``queued``      ``QueueLeft`` (also while its prompt plays)         queue (with live queues)
``booking``     ``CallbackDone``                                   callback (with live callbacks)
``""``          nothing (finished, or a recording ended by         -
                hang-up and ``HungUp`` is next)
==============  =================================================  ==========================

Every ``Play`` gets a new ``play_id`` and every input timer is named after
it, so a ``PlaybackDone`` or ``TimerExpired`` from an earlier prompt (one that
was replaced, barged in on, or cancelled too late) never matches and is
ignored. Events after ``finished`` are ignored.

On ``Started``: a caller in the blocklist group goes straight to the flow's
``screen`` node (R5); otherwise each notice in ``info.notices`` plays first
(R6), then the flow's ``start`` node. Entering a node notes it, acts on its
marks (complaint, outcome, text message), then does what its type says.
Branch nodes (and a say node with nothing to say) lead on at once; the hop
limit guards a flow that would keep leading on without waiting.

A callback node whose booking failed says so, then goes on at its
``failed`` target (when it has one) rather than ``next``.

``step`` never changes the state it is given: it works on a copy.
"""

from __future__ import annotations

import re

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
from ivr.flow.program import (
    BranchStep,
    CallbackStep,
    Case,
    CollectStep,
    Flow,
    HangupStep,
    Marks,
    MenuStep,
    MessageStep,
    PlayStep,
    Program,
    QueueStep,
    SayStep,
    TransferStep,
    digit_prompts,
    number_prompts,
)

__all__ = ["MAX_HOPS", "start", "step"]

PLAYBACK = "playback"
INPUT = "input"
RECORDING = "recording"
QUEUED = "queued"
BOOKING = "booking"

#: Nodes entered in one step without waiting for the caller; beyond this the call is ended.
MAX_HOPS = 64

_TEXTABLE = re.compile(r"\+?\d{3,15}")


def start(program: Program, info: CallInfo, now: float) -> tuple[FlowState, list[FlowAction]]:
    """Pick the flow for the dialled number and run ``Started``."""
    flow = program.flow_for(info.called)
    return step(FlowState(flow=flow.name, program=flow), Started(info), now)


def step(state: FlowState, event: FlowEvent, now: float) -> tuple[FlowState, list[FlowAction]]:
    """Feed one event; returns the new state and the actions to carry out, in order."""
    flow = state.program
    if state.finished or flow is None:
        return state, []
    s = state.copied()
    out: list[FlowAction] = []
    _Call(flow, s, out).handle(event)
    return s, out


def in_window(case: Case, minutes: int, weekday: int) -> bool:
    """Whether a time-of-day case holds at ``minutes`` past midnight on ``weekday`` (0 = Monday)."""
    if case.days is not None and weekday not in case.days:
        return False
    if case.start < case.end:
        return case.start <= minutes < case.end
    return minutes >= case.start or minutes < case.end  # past midnight


class _Call:
    """One step's work on the copied state ``s``, appending to ``out``."""

    __slots__ = ("flow", "out", "s")

    def __init__(self, flow: Flow, s: FlowState, out: list[FlowAction]) -> None:
        self.flow = flow
        self.s = s
        self.out = out

    # -- events ---------------------------------------------------------------

    def handle(self, event: FlowEvent) -> None:
        s = self.s
        match event:
            case Started(info=info):
                if s.info is None:
                    self.started(info)
            case HungUp():
                where = s.node or ("notice" if s.pending else "start")
                self.set_outcome(f"caller_hung_up_at:{where}")
                self.finish()
            case _ if s.info is None:
                pass  # nothing but Started and HungUp before the call starts
            case PlaybackDone(play_id=play_id):
                if play_id == s.play_id and s.waiting == PLAYBACK:
                    s.waiting = ""
                    self.played()
            case Digit(key=key):
                self.out.append(Note("key", key))
                if s.waiting in (PLAYBACK, INPUT) and s.node:
                    self.digit(key)
            case TimerExpired(name=name):
                if s.waiting == INPUT and name == self.timer_name():
                    s.waiting = ""  # a timer that fired is no longer armed
                    self.timed_out()
            case RecordingDone():
                if s.waiting == RECORDING:
                    s.waiting = ""
                    self.recorded(event)
            case CallbackDone():
                node = self.flow.nodes.get(s.node) if s.node else None
                if isinstance(node, CallbackStep) and s.waiting == BOOKING:
                    s.waiting = ""
                    self.callback_done(node, event)
            case QueueLeft(how=how):
                node = self.flow.nodes.get(s.node) if s.node else None
                if isinstance(node, QueueStep) and s.waiting in (PLAYBACK, QUEUED):
                    s.waiting = ""
                    self.left_queue(node, how)

    def started(self, info: CallInfo) -> None:
        s, flow = self.s, self.flow
        s.info = info
        if flow.screen is not None and flow.blocklist_group is not None and flow.blocklist_group in info.groups:
            self.out.append(Note("screened", "blocklist"))
            self.goto(flow.screen)
            return
        s.pending = list(info.notices)
        if s.pending:
            self.play_notice()
        else:
            self.goto(flow.start)

    def played(self) -> None:
        s = self.s
        if not s.node:  # a notice before the flow
            s.pending.pop(0)
            if s.pending:
                self.play_notice()
            else:
                self.goto(self.flow.start)
            return
        match self.flow.nodes[s.node]:
            case PlayStep(next=target) | SayStep(next=target):
                self.goto(target)
            case MenuStep(timeout=timeout) | CollectStep(timeout=timeout):
                self.wait_input(timeout)
            case QueueStep() if self.info.queues:
                s.waiting = QUEUED  # hold music and announcements until QueueLeft
            case CallbackStep(failed=failed) if failed is not None and s.outcome == "callback_failed":
                self.goto(failed)  # the caller has heard it could not be booked
            case QueueStep(next=target) | CallbackStep(next=target):
                self.goto(self.then(target))
            case MessageStep() as node:
                s.waiting = RECORDING
                self.out.append(Record("message", node.max_seconds, node.silence_seconds))
            case TransferStep() as node:
                self.transfer(node)
            case HangupStep():
                self.hang_up("completed")
            case _:
                pass

    def digit(self, key: str) -> None:
        s = self.s
        node = self.flow.nodes[s.node]
        if isinstance(node, MenuStep):
            target = node.keys.get(key)
            if target is not None:
                self.goto(target)
            else:
                self.retry(node, node.invalid_prompt)
        elif isinstance(node, CollectStep):
            if key == node.terminator:
                if len(s.digits) >= node.min_digits:
                    self.collected(node)
                else:
                    self.retry(node, node.invalid_prompt)
                return
            s.digits += key
            if len(s.digits) >= node.max_digits:
                self.collected(node)
            else:
                # the first key barges in on the prompt: a PlaybackDone for it is now stale
                self.cancel_input()
                s.play_id += 1
                self.wait_input(node.timeout)

    def callback_done(self, node: CallbackStep, done: CallbackDone) -> None:
        """Say what the store did, then go on (a caller who already has one goes to ``exists``).

        After "could not book" (``failed``) the flow goes on at the node's
        ``failed`` target when it has one (``played`` reads the outcome set here).
        """
        said: tuple[str, ...]
        if done.result == "exists" and node.exists is not None:
            self.set_outcome("callback_exists")
            self.goto(node.exists)
            return
        if done.result == "booked":
            self.set_outcome("callback_booked")
            said = (node.prompt or "callback_booked",)
            if done.minutes is not None:
                if done.minutes >= 120:
                    said += ("callback_within", *number_prompts(-(-done.minutes // 60)), "callback_hours")
                else:
                    said += ("callback_within", *number_prompts(max(1, done.minutes)), "queue_minutes")
        elif done.result == "cancelled":
            self.set_outcome("callback_cancelled")
            said = (node.prompt or "callback_cancelled",)
        else:
            self.set_outcome(f"callback_{done.result}")
            said = ({"exists": "callback_exists", "none": "callback_none"}.get(done.result, "callback_failed"),)
        self.play(said)

    def left_queue(self, node: QueueStep, how: str) -> None:
        if how == "connected":
            self.set_outcome("agent")
            self.finish()  # the call is the agent's now; the router ends it
            return
        self.out.append(Note("overflow", how))
        target = node.overflow.get(how, node.next)
        self.goto(self.then(target))

    def timed_out(self) -> None:
        s = self.s
        node = self.flow.nodes[s.node]
        if isinstance(node, MenuStep):
            self.retry(node, node.timeout_prompt)
        elif isinstance(node, CollectStep):
            if s.digits and len(s.digits) >= node.min_digits:
                self.collected(node)
            else:
                self.retry(node, node.timeout_prompt)

    def recorded(self, event: RecordingDone) -> None:
        self.out.append(Note("message", event.path))
        node = self.flow.nodes[self.s.node]
        if event.reason != "hangup" and isinstance(node, MessageStep):
            self.goto(node.next)

    # -- moving between nodes ---------------------------------------------------------

    def goto(self, target: str | None) -> None:
        hops = 0
        while target is not None:
            if hops == MAX_HOPS:
                self.set_outcome("flow_loop")
                self.out.append(Hangup())
                self.finish()
                return
            hops += 1
            target = self.enter(target)

    def enter(self, nid: str) -> str | None:
        """Enter a node; returns the node to go on to at once, or None to wait (or when finished)."""
        s, out = self.s, self.out
        self.cancel_input()
        node = self.flow.nodes[nid]
        s.node, s.attempts, s.digits, s.waiting = nid, 0, "", ""
        out.append(Note("node", nid))
        self.marks(node.marks)
        match node:
            case PlayStep():
                self.play(node.prompts)
            case MenuStep() | CollectStep():
                self.play((node.prompt,), barge_in=True)
            case SayStep():
                said = self.say(node)
                if not said:
                    return node.next
                self.play(((node.prompt,) if node.prompt else ()) + said)
            case BranchStep():
                return self.choose(node)
            case QueueStep():
                out.append(QueueRequest(node.queue))
                if node.marks.outcome is None:
                    self.set_outcome("queued")
                if node.prompt is None:
                    if self.info.queues:
                        s.waiting = QUEUED
                        return None
                    return self.then(node.next)
                self.play((node.prompt,))
            case CallbackStep():
                number = self.info.caller if node.number == "caller" else s.vars.get(node.number[4:], "")
                out.append(CallbackRequest(node.queue, number, node.slot, node.cancel))
                if self.info.callbacks:
                    s.waiting = BOOKING  # nothing is said about the callback before the store answers
                    return None
                if node.marks.outcome is None:
                    self.set_outcome("callback_requested")
                if node.prompt is None:
                    return self.then(node.next)
                self.play((node.prompt,))
            case MessageStep():
                self.play(node.prompts)
            case TransferStep():
                if node.prompt is None:
                    self.transfer(node)
                else:
                    self.play((node.prompt,))
            case HangupStep():
                if node.prompt is None:
                    self.hang_up("completed")
                else:
                    self.play((node.prompt,))
        return None

    def then(self, target: str | None) -> str | None:
        """Where a node with an optional ``next`` goes: there, or hang up."""
        if target is None:
            self.hang_up("completed")
        return target

    def choose(self, node: BranchStep) -> str:
        s, info = self.s, self.info
        for case in node.cases:
            if node.kind == "caller_group":
                hit = case.group in info.groups
            elif node.kind == "time_of_day":
                hit = in_window(case, info.local_time_minutes, info.weekday)
            elif node.kind == "surge":
                hit = case.surge == info.surge
            else:
                hit = node.var is not None and s.vars.get(node.var) == case.value
            if hit:
                return case.next
        return node.default

    def retry(self, node: MenuStep | CollectStep, reason_prompt: str | None) -> None:
        s = self.s
        self.cancel_input()
        s.attempts += 1
        s.digits = ""
        if s.attempts <= node.retries:
            self.play(((reason_prompt,) if reason_prompt else ()) + (node.prompt,), barge_in=True)
        elif node.on_failure is not None:
            self.goto(node.on_failure)
        else:
            self.set_outcome("menu_failed" if isinstance(node, MenuStep) else "collect_failed")
            self.out.append(Hangup())
            self.finish()

    def collected(self, node: CollectStep) -> None:
        self.cancel_input()
        self.s.vars[node.var] = self.s.digits
        self.goto(node.next)

    # -- actions --------------------------------------------------------------------------

    @property
    def info(self) -> CallInfo:
        info = self.s.info
        assert info is not None, "the call has started"
        return info

    def timer_name(self) -> str:
        return f"input:{self.s.play_id}"

    def play(self, prompts: tuple[str, ...], barge_in: bool = False) -> None:
        s = self.s
        s.play_id += 1
        s.waiting = PLAYBACK
        self.out.append(Play(prompts, s.play_id, barge_in))

    def play_notice(self) -> None:
        notice = self.s.pending[0]
        self.out.append(Note("notice", notice))
        self.play((notice,))

    def wait_input(self, seconds: float) -> None:
        self.s.waiting = INPUT
        self.out.append(StartTimer(self.timer_name(), seconds))

    def cancel_input(self) -> None:
        if self.s.waiting == INPUT:
            self.out.append(CancelTimer(self.timer_name()))
            self.s.waiting = ""

    def say(self, node: SayStep) -> tuple[str, ...]:
        if node.source == "caller":
            value = self.info.caller
        elif node.source == "var":
            value = self.s.vars.get(node.arg, "")
        else:
            value = node.arg
        if node.as_number:
            # ASCII digits only (int() refuses e.g. superscripts), and no int() of a long run from the
            # wire (over 4,300 digits it raises): from a million on a number is said digit by digit anyway
            raw = "".join(c for c in value if "0" <= c <= "9")
            if not raw:
                return ()
            digits = raw.lstrip("0") or "0"
            return digit_prompts(digits) if len(digits) > 6 else number_prompts(int(digits))
        return digit_prompts(value)

    def marks(self, marks: Marks) -> None:
        out = self.out
        if marks.complaint is not None:
            out.append(Note("complaint", marks.complaint))
        if marks.outcome is not None:
            self.set_outcome(marks.outcome)
        if marks.text is not None:
            caller = self.info.caller
            if _TEXTABLE.fullmatch(caller):
                out.append(SendText(caller, marks.text, marks.text_reason))
            else:
                out.append(Note("text_skipped", marks.text_reason))  # no number to text

    def set_outcome(self, outcome: str) -> None:
        self.s.outcome = outcome
        self.out.append(Note("outcome", outcome))

    def transfer(self, node: TransferStep) -> None:
        self.out.append(Note("transfer", node.uri))
        if node.marks.outcome is None:
            self.set_outcome("transferred")
        self.out.append(Transfer(node.uri))
        self.finish()

    def hang_up(self, default_outcome: str) -> None:
        if not self.s.outcome:
            self.set_outcome(default_outcome)
        self.out.append(Hangup())
        self.finish()

    def finish(self) -> None:
        self.s.finished = True
        self.s.waiting = ""

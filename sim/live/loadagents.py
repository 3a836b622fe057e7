"""The agents of a load run: pyVoIP phones that register, answer after the ring delay, talk and hang up.

Each agent of the scenario's roster gets a phone (pyVoIP, an independent SIP
stack: sim/live/phones.py holds its workarounds) on its own block of ports;
the phone answers a ring after the drawn ring delay and holds the call for the
caller's drawn handle time, so the server's queues see agents as the
simulator plays them. What each phone did is counted in ``AgentStats``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.live.loadcalls import LoadCall, LoadError
from sim.live.phones import PortBlocks, ack_with_the_dialogs_to_tag, halt_threads, import_pyvoip, stop_phone
from sim.plan import Plan

PYVOIP_ANSWER_DELAY = 1.0  # pyVoIP hands a ring to its phone's code 1 s after the INVITE


@dataclass
class AgentPhone:
    name: str
    team: str
    phone: Any = None
    ports: range | None = None  # its block of PortBlocks while it is registered
    busy: bool = False
    leaving: bool = False


@dataclass
class AgentStats:
    """What the agents' phones did (a ring the server cancelled is still answered: pyVoIP ignores CANCEL)."""

    rings: int = 0
    answered: int = 0
    talked: int = 0  # the agent hung up after the talk time
    ended_by_server: int = 0  # the server hung up first: the caller had left, or a late answer was dropped
    left_ringing: int = 0  # answer_probability: rings left to the ring timeout
    unknown_callers: int = 0  # an INVITE from a number not in the run: talk time = the scenario's mean
    errors: list[str] = field(default_factory=list)


class Agents:
    """The agents' pyVoIP phones: registered per the roster, answering and hanging up as the scenario says."""

    def __init__(
        self,
        plan: Plan,
        calls: list[LoadCall],
        host: str,
        port: int,
        password: Callable[[str], str],
        seed: int,
        ports: PortBlocks,
    ) -> None:
        self.voip = import_pyvoip()
        ld = plan.load
        assert ld is not None
        self.plan = plan
        self.host, self.port = host, port
        self.password = password
        self.talk = {c.number: c.handle for c in calls}
        self.ring_delay = plan.ring_delay.sampler()
        self.answer_probability = plan.answer_probability
        self.rng = random.Random(seed ^ 0x5A5A)
        self.lock = threading.Lock()
        self.stats = AgentStats()
        self.invited: dict[str, float] = {}  # Call-ID -> when the INVITE came
        self.ports = ports  # one block per phone: two phones never share a port
        self.phones = {
            name: AgentPhone(name, team.name)
            for team in plan.teams
            for name in ld.agents[team.name][: max(team.on_phones)]
        }
        self.on: dict[str, list[str]] = {team.name: [] for team in plan.teams}

    # -- the roster

    def staff(self, block: int) -> None:
        """Bring every team to its block's number of phones registered (leavers finish their call first)."""
        ld = self.plan.load
        assert ld is not None
        for team in self.plan.teams:
            wanted = team.on_phones[block]
            on = self.on[team.name]
            names = [n for n in ld.agents[team.name] if n in self.phones]
            for name in names:
                if len(on) >= wanted:
                    break
                agent = self.phones[name]
                if name in on:
                    continue
                agent.leaving = False
                if agent.phone is None:
                    self._register(agent)
                on.append(name)
            while len(on) > wanted:
                agent = self.phones[on.pop()]
                with self.lock:
                    agent.leaving = True
                    busy = agent.busy
                if not busy:
                    self._unregister(agent)

    def _register(self, agent: AgentPhone) -> None:
        try:
            block = self.ports.take()
        except RuntimeError as exc:
            raise LoadError(f"agent {agent.name}'s phone: {exc} (widen --phone-ports)") from exc
        agent.ports = block
        phone = self.voip.VoIPPhone(
            self.host,
            self.port,
            agent.name,
            self.password(agent.name),
            myIP="127.0.0.1",
            sipPort=block[0],
            rtpPortLow=block[1],
            rtpPortHigh=block[-1],
            callCallback=lambda call, a=agent: self._on_call(a, call),
        )
        phone.sip.register_timeout = 5
        ack_with_the_dialogs_to_tag(phone)
        original = phone.sip.callCallback

        def note_invite(message: Any) -> None:
            if getattr(message, "method", None) == "INVITE":
                with self.lock:
                    self.invited.setdefault(message.headers["Call-ID"], time.monotonic())
            original(message)

        phone.sip.callCallback = note_invite
        agent.phone = phone
        try:
            phone.start()
        except Exception as exc:
            self._unregister(agent)
            raise LoadError(f"agent {agent.name}'s phone did not register with {self.host}:{self.port}: {exc}") from exc
        if phone.get_status() != self.voip.PhoneStatus.REGISTERED:
            self._unregister(agent)
            raise LoadError(f"agent {agent.name}'s phone was refused (check --password and the server's agents)")

    def _unregister(self, agent: AgentPhone) -> None:
        phone, agent.phone = agent.phone, None
        block, agent.ports = agent.ports, None
        if phone is not None:
            stop_phone(phone)
        if block is not None:
            self.ports.give_back(block)  # only once its phone's sockets are closed

    def close(self, wait: float = 15.0) -> None:
        """Unregister every phone, all at once; a phone stuck with its server is halted after ``wait`` s."""
        stopping = []
        for agent in self.phones.values():
            phone, agent.phone = agent.phone, None
            if phone is not None:
                thread = threading.Thread(target=stop_phone, args=(phone,), name=f"stop-{agent.name}", daemon=True)
                thread.start()
                stopping.append((thread, phone))
        deadline = time.monotonic() + wait
        for thread, phone in stopping:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                halt_threads(phone)

    # -- a ring (in a pyVoIP thread)

    def _on_call(self, agent: AgentPhone, call: Any) -> None:
        voip = self.voip
        with self.lock:
            self.stats.rings += 1
            invited = self.invited.pop(call.call_id, time.monotonic() - PYVOIP_ANSWER_DELAY)
            delay = self.ring_delay(self.rng)
            answers = self.answer_probability >= 1.0 or self.rng.random() < self.answer_probability
        if not answers:
            with self.lock:
                self.stats.left_ringing += 1
            return  # it rings until the server's ring timeout
        time.sleep(max(0.0, invited + delay - time.monotonic()))
        number = call.request.headers["From"]["number"]
        talk = self.talk.get(number)
        try:
            with self.lock:
                agent.busy = True
            try:
                call.answer()
            except voip.InvalidStateError:
                with self.lock:
                    self.stats.ended_by_server += 1
                return
            answered = time.monotonic()
            with self.lock:
                self.stats.answered += 1
                if talk is None:
                    self.stats.unknown_callers += 1
            end = answered + (talk if talk is not None else self.plan.mean_handle())
            while call.state == voip.CallState.ANSWERED and time.monotonic() < end:
                time.sleep(0.01)
            if call.state == voip.CallState.ANSWERED:
                call.hangup()
                with self.lock:
                    self.stats.talked += 1
            else:
                with self.lock:
                    self.stats.ended_by_server += 1
        except Exception as exc:  # noqa: BLE001 (a pyVoIP thread must not die silently: the run reports it)
            with self.lock:
                self.stats.errors.append(f"{agent.name}: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                agent.busy = False
                leave = agent.leaving
            if leave:
                self._unregister(agent)

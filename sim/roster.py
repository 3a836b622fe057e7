"""The simulated agents: teams logged in per roster block, shifts that end after the call, reserve echelons.

Each block the roster brings every team to its planned number on the phones:
agents whose shift ended but who are still on a call are taken back first,
then fresh ones log in; a surplus is let go, the ready ones first. An agent at
the end of their shift logs out once their call (or callback) is done. R17:
a reserve echelon is called in while its trigger holds (one at a time, in
order, each after its mobilisation delay) and the last one is released first
when all is calm.
"""

from __future__ import annotations

from collections.abc import Container

from queueing.agents import AgentState
from queueing.events import AgentLoggedIn, AgentLoggedOut, AgentNotReady, AgentReady
from sim.plan import team_agent_ids
from sim.world import Kind, World

END_OF_SHIFT = "end of shift"


class Roster:
    def __init__(self, world: World, busy: Container[str]) -> None:
        """``busy``: agents on a callback (the desk's jobs), who stay logged in until it ends."""
        plan = world.plan
        self.world = world
        self._busy = busy
        self._team_of: dict[str, str] = {}
        self._pool: dict[str, list[str]] = {}  # logged-out agent ids per team, next to use last
        self._active: dict[str, set[str]] = {}  # logged in and staying, per team
        self.leaving: set[str] = set()  # shift over: log out once free
        self.returning: set[str] = set()  # taken back while leaving: ready again once free
        self.settling = False
        for team in plan.teams:
            self._register_team(team.name, team_agent_ids(team.name, max(team.on_phones, default=0)))
        for reserve in plan.reserves:
            self._register_team(reserve.name, team_agent_ids(reserve.name, reserve.agents))
        self.reserve_state: list[float | None] = [None] * len(plan.reserves)  # online since / None
        self._reserve_pending: list[bool] = [False] * len(plan.reserves)

    def _register_team(self, name: str, ids: list[str]) -> None:
        for a in ids:
            self._team_of[a] = name
        self._pool[name] = list(reversed(ids))
        self._active[name] = set()

    def on_block(self, block: int) -> None:
        for team in self.world.plan.teams:
            self.staff(team.name, team.on_phones[block])

    def staff(self, team: str, wanted: int) -> None:
        """Bring ``team`` to ``wanted`` agents on the phones: take back leavers, log in, or let the surplus go."""
        world = self.world
        active = self._active[team]
        agents = world.engine.agents
        while len(active) < wanted:
            leavers = sorted(a for a in self.leaving if self._team_of[a] == team)
            if leavers:  # still logged in, finishing a call: they stay
                agent = leavers[0]
                self.leaving.discard(agent)
                active.add(agent)
                self.returning.add(agent)
                continue
            if not self._pool[team]:
                break
            agent = self._pool[team].pop()
            active.add(agent)
            world.feed(AgentLoggedIn(agent=agent, now=world.now))
        if len(active) > wanted:
            order = {AgentState.READY: 0, AgentState.NOT_READY: 1, AgentState.WRAP_UP: 2}
            surplus = sorted(active, key=lambda a: (a in self._busy, order.get(agents[a].state, 3), a))
            for agent in surplus[: len(active) - wanted]:
                active.discard(agent)
                self.returning.discard(agent)
                self.leaving.add(agent)
        self.settle_leavers()

    def settle_leavers(self) -> None:
        """Agents at the end of their shift log out once their call (or callback) is done.

        An agent taken back before that is made ready again once the call's wrap-up is over.
        """
        world = self.world
        self.settling = True
        try:
            agents = world.engine.agents
            changed = True
            while changed:
                changed = False
                for agent_id in sorted(self.returning):
                    agent = agents[agent_id]
                    if agent.state is AgentState.NOT_READY and agent.reason == END_OF_SHIFT:
                        if agent_id not in self._busy:
                            self.returning.discard(agent_id)
                            world.feed(AgentReady(agent=agent_id, now=world.now))
                            changed = True
                    elif agent.pending_not_ready != END_OF_SHIFT:
                        self.returning.discard(agent_id)
                for agent_id in sorted(self.leaving):
                    if agent_id in self._busy:
                        continue
                    agent = agents[agent_id]
                    state = agent.state
                    if state is AgentState.READY or state is AgentState.NOT_READY:
                        self.leaving.discard(agent_id)
                        self._pool[self._team_of[agent_id]].append(agent_id)
                        world.feed(AgentLoggedOut(agent=agent_id, now=world.now))
                        changed = True
                    elif state is AgentState.WRAP_UP or (
                        state is AgentState.TALKING and agent.pending_not_ready is None
                    ):
                        world.feed(AgentNotReady(agent=agent_id, reason=END_OF_SHIFT, now=world.now))
                        changed = True
        finally:
            self.settling = False

    # ------------------------------------------------------------- reserves

    def on_reserve(self, index: int) -> None:
        """A reserve echelon comes online (its mobilisation delay is over)."""
        world = self.world
        self._reserve_pending[index] = False
        self.reserve_state[index] = world.now
        reserve = world.plan.reserves[index]
        world.counts["reserve_activations"] += 1
        self.staff(reserve.name, reserve.agents)

    def check_reserves(self, ewt_now: float, waiting: int) -> None:
        """R17: call the next echelon in while its trigger holds; release the last one when all is calm."""
        world = self.world
        reserves = world.plan.reserves
        if not reserves:
            return
        decided, within = world.block_sl_so_far()
        level = within / decided if decided >= 10 else None
        surge = world.engine.surge
        for i, reserve in enumerate(reserves):
            online = self.reserve_state[i] is not None or self._reserve_pending[i]
            if online:
                continue
            if reserve.when.fires(ewt_now, waiting, level, surge):
                earlier_ready = all(self.reserve_state[j] is not None for j in range(i))
                if earlier_ready:
                    self._reserve_pending[i] = True
                    world.push(world.now + reserve.delay, Kind.RESERVE, i)
            break  # one echelon at a time, in order
        for i in range(len(reserves) - 1, -1, -1):
            since = self.reserve_state[i]
            if since is None:
                continue
            reserve = reserves[i]
            if not reserve.when.fires(ewt_now, waiting, level, surge) and world.now - since >= reserve.min_online:
                self.reserve_state[i] = None
                self.staff(reserve.name, 0)
            break  # release the last echelon first

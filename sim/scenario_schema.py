"""The scenario file's schema: arrivals, callers, agents, callbacks, surge and load settings (docs/sim.md).

Field-level checks live here; the cross references (queues, groups, teams,
CSV files) are checked where the scenario is compiled into a plan
(``sim/scenario.py``), which names the file and the line of a problem. The
queue and surge settings are the server's own (``ivr.settings.queues``), so a
scenario plans with exactly the limits the server runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from ivr.settings.base import Strict
from ivr.settings.queues import QueueSettings, SurgeSettings
from ivr.settings.values import Day, Minutes, Name, SkillLevel

# ---------------------------------------------------------------- distributions


def _dist_shorthand(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return {"dist": "constant", "value": v}
    return v


class DistSettings(Strict):
    """Seconds drawn from a distribution; a plain number is a constant."""

    dist: Literal["exponential", "lognormal", "constant", "empirical", "never"]
    mean: float | None = Field(None, gt=0, allow_inf_nan=False, description="exponential, lognormal")
    sd: float | None = Field(None, ge=0, allow_inf_nan=False, description="lognormal standard deviation")
    value: float | None = Field(None, ge=0, allow_inf_nan=False, description="constant")
    values: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(None, min_length=1)
    csv: str | None = Field(None, description="empirical: a CSV file of seconds (relative to the scenario)")
    column: str | None = Field(None, description="empirical CSV column (default: the first)")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> DistSettings:
        need = {"exponential": ("mean",), "lognormal": ("mean", "sd"), "constant": ("value",)}.get(self.dist, ())
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.dist} distribution needs {name}")
        allowed = set(need) | ({"values", "csv", "column"} if self.dist == "empirical" else set())
        for name in ("mean", "sd", "value", "values", "csv", "column"):
            if name not in allowed and getattr(self, name) is not None:
                raise ValueError(f"{name} does not belong to a {self.dist} distribution")
        if self.dist == "empirical" and (self.values is None) == (self.csv is None):
            raise ValueError("an empirical distribution needs values or csv (one of them)")
        return self


Distribution = Annotated[DistSettings, BeforeValidator(_dist_shorthand)]


def _exp(mean: float) -> DistSettings:
    return DistSettings(dist="exponential", mean=mean)


# ---------------------------------------------------------------- arrivals


class SurgeShape(Strict):
    """Extra traffic on top of the base arrivals (docs/sim.md, "Surge shapes")."""

    shape: Literal["step", "ramp", "spike", "fault"]
    start: Minutes = Field(description='"HH:MM"')
    end: Minutes | None = Field(None, description='"HH:MM"; default: the end of the run')
    peak: Minutes | None = Field(None, description="ramp: when it is at its top (default: end)")
    factor: float | None = Field(None, gt=0, allow_inf_nan=False, description="multiplier of the base rate")
    decay: float | None = Field(None, gt=0, allow_inf_nan=False, description="spike/fault: seconds to fall by e")
    group: Name | None = Field(None, description="fault: the caller group that calls")
    calls: float | None = Field(None, ge=0, allow_inf_nan=False, description="fault: extra calls per block")
    queue: Name | None = Field(None, description="fault: the queue they join (default: the queue mix)")
    notice_resolves: float = Field(0.0, ge=0, le=1, description="fault: R6 share who hang up after the notice")

    @model_validator(mode="after")
    def _fields_of_shape(self) -> SurgeShape:
        if self.shape == "fault":
            if self.group is None:
                raise ValueError("a fault surge names the caller group that calls (group)")
            if (self.calls is None) == (self.factor is None):
                raise ValueError("a fault surge needs calls (extra per block) or factor (of the base), one of them")
        else:
            if self.factor is None:
                raise ValueError(f"a {self.shape} surge needs a factor")
            for name in ("group", "calls", "queue"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} belongs to a fault surge only")
            if self.notice_resolves:
                raise ValueError("notice_resolves belongs to a fault surge only")
        if self.peak is not None and self.shape != "ramp":
            raise ValueError("peak belongs to a ramp only")
        if self.shape == "ramp" and self.peak is None and self.end is None:
            raise ValueError("a ramp needs its top: peak (then down to x1 at end, or held) or end (up to it)")
        if self.decay is not None and self.shape not in ("spike", "fault"):
            raise ValueError("decay belongs to a spike or a fault surge only")
        return self


PerBlock = list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]


class ArrivalSettings(Strict):
    """Calls reaching the IVR per block: a table (``per_block``) or a CSV of historic counts."""

    per_block: PerBlock | None = Field(None, description="calls per block, all queues (split by the mix)")
    per_queue: dict[Name, PerBlock] | None = Field(None, description="calls per block for each queue")
    csv: str | None = Field(None, description="CSV with a header: start (optional), calls or one column per queue")
    mix: dict[Name, Annotated[float, Field(ge=0)]] | None = Field(None, description="queue -> share of the calls")
    surges: list[SurgeShape] = Field(default_factory=list)
    step: float = Field(60.0, ge=1, le=1800, description="seconds of each constant-rate step of a surge shape")

    @model_validator(mode="after")
    def _one_source(self) -> ArrivalSettings:
        if sum(x is not None for x in (self.per_block, self.per_queue, self.csv)) != 1:
            raise ValueError("give the arrivals as per_block, per_queue or csv (one of them)")
        return self


# ---------------------------------------------------------------- callers


RedialAfter = Literal["abandoned", "peak_shaving", "declined"]


def _redial_after_all() -> list[RedialAfter]:
    return ["abandoned", "peak_shaving", "declined"]


class RedialSettings(Strict):
    probability: float = Field(0.0, ge=0, le=1, description="share who call again")
    delay: Distribution = Field(default_factory=lambda: _exp(300.0), description="seconds before they do")
    max_attempts: int = Field(3, ge=1, le=100, description="calls in all, the first included")
    after: list[RedialAfter] = Field(default_factory=_redial_after_all, description="who redials")


class DiversionSettings(Strict):
    hotkey: float = Field(0.0, ge=0, le=1, description="R7: share who take the hot-topic key and leave")
    self_service: float = Field(0.0, ge=0, le=1, description="R9/R13: share who go to self-service")
    when: Literal["always", "surge"] = Field("surge", description="offered always, or only in surge mode")

    @model_validator(mode="after")
    def _at_most_all(self) -> DiversionSettings:
        if self.hotkey + self.self_service > 1:
            raise ValueError("hotkey + self_service must not exceed 1")
        return self


class CallerSettings(Strict):
    handle_time: Distribution = Field(default_factory=lambda: _exp(180.0), description="talk time, seconds")
    handle_time_by_queue: dict[Name, Distribution] = Field(default_factory=dict)
    patience: Distribution | None = Field(
        default_factory=lambda: _exp(120.0), description="seconds a caller holds on; null: for ever"
    )
    groups: dict[Name, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="caller group -> share of the base callers in it (tiers, urgent, faults)"
    )
    redial: RedialSettings = RedialSettings()
    diversion: DiversionSettings = DiversionSettings()

    @model_validator(mode="after")
    def _shares(self) -> CallerSettings:
        if sum(self.groups.values()) > 1 + 1e-9:
            raise ValueError("the caller group shares add up to more than 1")
        return self


# ---------------------------------------------------------------- agents


def _per_block(v: Any) -> Any:
    return [v] if isinstance(v, int) and not isinstance(v, bool) else v


class TeamSettings(Strict):
    name: Name
    skills: dict[Name, SkillLevel] = Field(default_factory=dict)
    per_block: Annotated[list[Annotated[int, Field(ge=0, le=10000)]], BeforeValidator(_per_block)] = Field(
        description="agents rostered in each block; one number for every block"
    )


class TriggerSettings(Strict):
    ewt: float | None = Field(None, ge=0, description="a queue's estimated wait at or above, seconds")
    queue_length: int | None = Field(None, ge=1, description="callers waiting in a queue, at or above")
    service_level: float | None = Field(None, ge=0, le=1, description="the block's service level so far below")
    surge: bool = Field(False, description="surge mode on")

    @model_validator(mode="after")
    def _something(self) -> TriggerSettings:
        if self.ewt is None and self.queue_length is None and self.service_level is None and not self.surge:
            raise ValueError("a reserve needs a trigger: ewt, queue_length, service_level or surge")
        return self


class ReserveSettings(Strict):
    name: Name
    agents: int = Field(ge=1, le=10000)
    skills: dict[Name, SkillLevel] = Field(default_factory=dict)
    when: TriggerSettings
    delay: float = Field(600.0, ge=0, description="seconds from the trigger to being on the phones")
    min_online: float = Field(1800.0, ge=0, description="seconds kept on the phones at least")


class AgentsSettings(Strict):
    teams: list[TeamSettings] = Field(min_length=1)
    shrinkage: float = Field(0.0, ge=0, lt=1, description="share of rostered time off the phones")
    ring_delay: Distribution = Field(
        default_factory=lambda: DistSettings(dist="constant", value=3.0), description="seconds to answer a ring"
    )
    answer_probability: float = Field(1.0, ge=0, le=1, description="share of rings the agent answers")
    reserves: list[ReserveSettings] = Field(default_factory=list, max_length=10, description="R17 echelons, in order")


class CallbackSimSettings(Strict):
    enabled: bool = True
    take_up: float = Field(0.7, ge=0, le=1, description="share of callers offered a callback (or message) who book")
    promise_margin: float = Field(300.0, ge=0)
    max_age: float = Field(86400.0, gt=0)
    dispatch_interval: float = Field(2.0, gt=0)
    reserve_agents: int = Field(1, ge=0)
    customer_answers: float = Field(1.0, ge=0, le=1, description="share of dial attempts the customer answers")
    max_attempts: int = Field(3, ge=1, le=20, description="dial attempts in all before the callback fails")
    retry_delay: float = Field(600.0, gt=0, le=86400, description="seconds between two attempts")
    customer_ring: float = Field(30.0, gt=0, le=300, description="seconds an unanswered customer's phone rings")
    call_again: float = Field(0.0, ge=0, le=1, description="share of callers who booked and still call again")


Key = Annotated[str, Field(pattern=r"^[0-9*#]$")]


class LoadSettings(Strict):
    """How `frontdesk load` plays this scenario to a running server (docs/sim.md)."""

    number: str = Field("100", pattern=r"^[0-9A-Za-z*#+._-]{1,32}$", description="what the callers dial")
    keys: dict[Name, Key] = Field(
        default_factory=dict, description="queue -> the key that joins it; none: the number leads to the queue"
    )
    hotkey_key: Key | None = Field(None, description="R7: the key of callers who take the hot-topic answer")
    self_service_key: Key | None = Field(None, description="R9: the key of callers who go to self-service")
    key_delay: float = Field(0.5, ge=0, le=60, description="seconds from the answer to the key")
    leave_after: float = Field(10.0, gt=0, le=3600, description="a diverted caller hangs up this long after the key")
    agents: dict[Name, list[Name]] = Field(
        description="team -> the server's agents who play it (as many as its busiest block)"
    )
    first_number: int = Field(4470000000, ge=0, lt=10**14, description="callers' numbers count up from this one")


# Per-node capacities measured on this project's 2-core machine (the README's Performance section, 2026-12-02):
# frontdesk's highest clean SIP rate (bench-sip), the media streams one node paced with p99 <= 5 ms
# (bench-media), the compiled engine's events/s on the overloaded model (bench-sim), Kamailio with one worker.
SIP_CALLS_PER_NODE = 1177.0
MEDIA_STREAMS_PER_NODE = 1000.0
ENGINE_EVENTS_PER_REPLICA = 149843.0
KAMAILIO_CALLS_PER_WORKER = 2055.0


class SizingSettings(Strict):
    """Cluster sizing: what a node carries, and the margin kept (docs/sim.md, "Sizing the cluster")."""

    headroom: float = Field(0.3, ge=0, lt=1, allow_inf_nan=False, description="share of each node kept free")
    spare_nodes: int = Field(1, ge=0, le=100, description="nodes beyond the peak's need: 1 for N+1")
    sip_calls_per_node: float = Field(
        SIP_CALLS_PER_NODE, gt=0, allow_inf_nan=False, description="SIP calls a node begins per second"
    )
    media_streams_per_node: float = Field(
        MEDIA_STREAMS_PER_NODE, gt=0, allow_inf_nan=False, description="concurrent RTP streams a node paces"
    )
    engine_events_per_replica: float = Field(
        ENGINE_EVENTS_PER_REPLICA, gt=0, allow_inf_nan=False, description="queue events a node's replica applies/s"
    )
    kamailio_calls_per_worker: float = Field(
        KAMAILIO_CALLS_PER_WORKER, gt=0, allow_inf_nan=False, description="calls/s one Kamailio UDP worker routes"
    )
    events_per_call: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="engine events per call; default: the simulation's own"
    )


class SurgeSwitchSettings(Strict):
    at: Minutes = Field(description='"HH:MM"')
    on: bool | None = Field(description="true, false, or null to release the manual switch")


class Scenario(Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    seed: int = 1
    replications: int = Field(10, ge=1, le=10000)
    block_minutes: Literal[15, 30] = 30
    start: Minutes = Field(480, description='clock time of the first block, "HH:MM"')
    day: Day | None = Field(None, description="weekday, for the days of the surge schedule windows")
    warmup_blocks: int = Field(0, ge=0, description="blocks left out of the totals")
    sample_every: float = Field(60.0, gt=0, le=1800, description="seconds between queue-length samples")
    server_config: str | None = Field(None, description="the server's YAML config: its queues and surge settings")
    queues: dict[Name, QueueSettings] | None = Field(None, description="as in the server config (docs/queueing.md)")
    surge: SurgeSettings | None = None
    surge_switch: list[SurgeSwitchSettings] = Field(default_factory=list, description="manual switch events")
    arrivals: ArrivalSettings
    callers: CallerSettings = CallerSettings()
    agents: AgentsSettings
    callbacks: CallbackSimSettings = CallbackSimSettings()
    load: LoadSettings | None = Field(None, description="for `frontdesk load`: what callers dial, who the agents are")
    sizing: SizingSettings = Field(default_factory=SizingSettings, description="cluster sizing: node capacities")

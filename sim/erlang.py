"""Erlang B, C and A: the analytic queueing models for quick staffing and to check the simulator.

All three take the arrival rate (calls per second), the average handle time
(AHT, seconds: talk plus wrap-up, the time an agent is held per call) and the
number of agents N; the offered load is A = arrival_rate * AHT Erlangs.

- **Erlang B** (M/M/N/N): no line; a caller who finds every agent busy is lost.
- **Erlang C** (M/M/N): an endless line, infinitely patient callers. Needs A < N.
- **Erlang A** (M/M/N+M): an endless line, callers with exponential patience
  (mean ``patience`` seconds) who hang up when it runs out. Any load.

Every model returns the same six figures (docs/sim.md has the definitions):
``p_wait`` (an arriving caller finds every agent busy and waits),
``p_block`` (lost at once, Erlang B only), ``asa_s`` (mean wait of answered
callers, zeros included: the engine's ASA), ``service_level`` (share of
offered callers answered within the target wait), ``p_abandon`` and
``occupancy`` (carried load per agent).

Numerics. Nothing here forms A**N or N!: Erlang B runs its recurrence in log
space, Erlang C follows from it, and Erlang A is written with the regularized
incomplete gamma function (the Garnett-Mandelbaum-Reiman form)
evaluated in log space by its series or its continued fraction, so N from 1 to
well past 1000 and loads above N are fine.

Erlang A, the formulas. Let mu = 1/AHT, theta = 1/patience, a = N mu/theta,
x = arrival_rate/theta, B the Erlang B value, P(s, z) the regularized lower
incomplete gamma function, and

    S = sum_{j>=0} x**j / ((a+1)(a+2)...(a+j)) = Gamma(a+1) P(a, x) x**-a e**x

(the weight of the states with a line, relative to the state "N busy, nobody
waiting"). Then

    P(wait)                = B S / (1 - B + B S)
    P(abandon | wait)      = 1 - (a/x) (1 - 1/S)
    P(answered within t | wait) = (a/x) (P(a+1, x) - P(a+1, x e**(-theta t))) / P(a, x)

A caller who finds j others in line reaches an agent after a sum of
exponential stages with rates N mu + k theta (k = j..0) unless their own
patience runs out first; summed over j this gives the last line, and the mean
wait of those who are answered is the series

    E[wait; answered | wait] = sum_j w_j a/(a+j+1) * sum_{k=1}^{j+1} 1/(theta (a+k)) / S,

with w_j the terms of S. The tests check every figure against a slow exact
(``fractions``) summation over the birth-death chain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Model = Literal["b", "c", "a"]
MODELS: tuple[Model, ...] = ("b", "c", "a")

_TINY = 1e-300
_EPS = 1e-17
_MAX_ITER = 10_000_000


class ErlangError(ValueError):
    """The inputs make no sense (negative rates, no agents, ...)."""


@dataclass(frozen=True, slots=True)
class Metrics:
    """The six figures of one model; ``math.inf`` where a figure is unbounded (Erlang C at A >= N)."""

    p_wait: float
    p_block: float
    asa_s: float
    service_level: float
    p_abandon: float
    occupancy: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready: infinite values become None (null)."""
        return {k: (v if math.isfinite(v) else None) for k, v in asdict(self).items()}


# --------------------------------------------------------------- Erlang B and C


def log_erlang_b(agents: int, load: float) -> float:
    """log of the Erlang B blocking probability, by the recurrence B(n) = A B(n-1) / (n + A B(n-1)) in log space."""
    _check_agents(agents)
    if load < 0 or not math.isfinite(load):
        raise ErlangError(f"offered load must be a finite number >= 0, got {load}")
    if load == 0:
        return -math.inf
    log_a = math.log(load)
    log_b = 0.0  # B(0) = 1
    for n in range(1, agents + 1):
        # log(n + A B) = log n + log1p(A B / n), with A B / n = exp(log_a + log_b - log n)
        log_b = log_a + log_b - (math.log(n) + _log1p_exp(log_a + log_b - math.log(n)))
    return log_b


def erlang_b(agents: int, load: float) -> float:
    """Blocking probability of M/M/N/N with offered load ``load`` Erlangs."""
    return math.exp(log_erlang_b(agents, load))


def erlang_c(agents: int, load: float) -> float:
    """Probability of waiting in M/M/N (1.0 when the load reaches the agents: the line grows without end)."""
    if load >= agents:
        _check_agents(agents)
        return 1.0
    return _c_from_b(agents, load, log_erlang_b(agents, load))


def _c_from_b(agents: int, load: float, log_b: float) -> float:
    if log_b == -math.inf:
        return 0.0
    # C = N B / (N - A (1 - B)) = 1 / (1 + (N - A)(1 - B) / (N B))
    b = math.exp(log_b)
    ratio = math.exp(math.log(agents - load) + math.log1p(-b) - math.log(agents) - log_b)
    return 1.0 / (1.0 + ratio)


# ------------------------------------------------------------------ the models


def evaluate(
    model: Model,
    arrival_rate: float,
    aht: float,
    agents: int,
    *,
    patience: float | None = None,
    target_wait: float = 20.0,
) -> Metrics:
    """The six figures of ``model`` ("b", "c" or "a"); Erlang A needs ``patience`` (mean, seconds)."""
    _check_inputs(arrival_rate, aht, agents, target_wait)
    if model == "b":
        return _metrics_b(arrival_rate, aht, agents, log_erlang_b(agents, arrival_rate * aht))
    if model == "c":
        return _metrics_c(arrival_rate, aht, agents, target_wait, _log_b_or_none(agents, arrival_rate * aht))
    if model == "a":
        if patience is None:
            raise ErlangError("Erlang A needs the callers' mean patience (--patience SECONDS)")
        if not patience > 0:
            raise ErlangError(f"patience must be more than 0 seconds, got {patience}")
        if math.isinf(patience):
            return _metrics_c(arrival_rate, aht, agents, target_wait, _log_b_or_none(agents, arrival_rate * aht))
        return _metrics_a(arrival_rate, aht, agents, patience, target_wait, log_erlang_b(agents, arrival_rate * aht))
    raise ErlangError(f"unknown model {model!r}: use b, c or a")


def _log_b_or_none(agents: int, load: float) -> float | None:
    return None if load >= agents else log_erlang_b(agents, load)


def _metrics_b(arrival_rate: float, aht: float, agents: int, log_b: float) -> Metrics:
    b = math.exp(log_b)
    load = arrival_rate * aht
    # nobody waits: the answered are answered at once, within any target
    return Metrics(
        p_wait=0.0, p_block=b, asa_s=0.0, service_level=1.0 - b, p_abandon=0.0, occupancy=load * (1.0 - b) / agents
    )


def _metrics_c(arrival_rate: float, aht: float, agents: int, target_wait: float, log_b: float | None) -> Metrics:
    load = arrival_rate * aht
    if log_b is None:  # A >= N: the line grows for ever
        return Metrics(p_wait=1.0, p_block=0.0, asa_s=math.inf, service_level=0.0, p_abandon=0.0, occupancy=1.0)
    c = _c_from_b(agents, load, log_b)
    gap = agents - load
    return Metrics(
        p_wait=c,
        p_block=0.0,
        asa_s=c * aht / gap,
        service_level=1.0 - c * math.exp(-gap * target_wait / aht),
        p_abandon=0.0,
        occupancy=load / agents,
    )


def _metrics_a(
    arrival_rate: float, aht: float, agents: int, patience: float, target_wait: float, log_b: float
) -> Metrics:
    if arrival_rate == 0:
        return Metrics(p_wait=0.0, p_block=0.0, asa_s=0.0, service_level=1.0, p_abandon=0.0, occupancy=0.0)
    theta = 1.0 / patience
    a = agents / aht / theta  # N mu / theta
    x = arrival_rate / theta
    log_s = log_tail_weight(a, x)
    if log_b == -math.inf:
        p_wait = 0.0
    else:
        # P(wait) = B S / (1 - B + B S) = 1 / (1 + (1 - B) / (B S))
        p_wait = 1.0 / (1.0 + math.exp(math.log1p(-math.exp(log_b)) - log_b - log_s))
    q = a / x
    p_ab_wait = min(1.0, max(0.0, 1.0 - q + q * math.exp(-log_s)))
    p_abandon = p_wait * p_ab_wait
    within_given_wait = _answered_within_given_wait(a, x, theta * target_wait)
    answered = 1.0 - p_abandon
    wait_answered = p_wait * _mean_wait_answered_given_wait(a, x, theta, log_s)
    load = arrival_rate * aht
    return Metrics(
        p_wait=p_wait,
        p_block=0.0,
        asa_s=wait_answered / answered if answered > 0 else 0.0,
        service_level=(1.0 - p_wait) + p_wait * within_given_wait,
        p_abandon=p_abandon,
        occupancy=min(1.0, load * answered / agents),
    )


def log_tail_weight(a: float, x: float) -> float:
    """log S, S = sum_j x**j / ((a+1)...(a+j)) = Gamma(a+1) P(a, x) x**-a e**x (see the module docstring)."""
    if x == 0:
        return 0.0
    if x < a + 1:
        return math.log(a * _gamma_series(a, x))
    return math.log(a) + _log_gamma_p(a, x) - _log_prefix(a, x)


def _answered_within_given_wait(a: float, x: float, theta_t: float) -> float:
    """P(answered within t | wait) = (a/x) (P(a+1, x) - P(a+1, y)) / P(a, x), y = x e**(-theta t)."""
    if theta_t <= 0:
        return 0.0
    s = a + 1
    y = x * math.exp(-theta_t)
    if y >= s + 1:  # both upper tails are the accurate side
        lq_x, lq_y = _log_gamma_q(s, x), _log_gamma_q(s, y)
        log_d = lq_y + _log1m_exp(lq_x - lq_y)
    elif x < s + 1:  # both lower tails small: keep their ratio
        lp_x, lp_y = _log_gamma_p(s, x), _log_gamma_p(s, y)
        log_d = lp_x + _log1m_exp(lp_y - lp_x)
    else:
        d = math.exp(_log_gamma_p(s, x)) - math.exp(_log_gamma_p(s, y))
        log_d = math.log(d) if d > 0 else -math.inf
    if log_d == -math.inf:
        return 0.0
    return min(1.0, math.exp(math.log(a / x) + log_d - _log_gamma_p(a, x)))


def _mean_wait_answered_given_wait(a: float, x: float, theta: float, log_s: float) -> float:
    """E[wait; answered | wait]: the series over the callers ahead, summed in log space from its first term."""
    log_x = math.log(x)
    log_w = 0.0  # log w_0
    harmonic = 0.0
    total = 0.0  # sum of w_j * a/(a+j+1) * H_j, scaled by exp(-scale)
    scale = 0.0
    peak = max(0.0, x - a - 1)
    j = 0
    while j < _MAX_ITER:
        harmonic += 1.0 / (a + j + 1)
        if log_w > scale:
            total *= math.exp(scale - log_w)
            scale = log_w
        term = math.exp(log_w - scale) * a / (a + j + 1) * harmonic
        total += term
        if j > peak and term < _EPS * total:
            break
        log_w += log_x - math.log(a + j + 1)
        j += 1
    return math.exp(math.log(total) + scale - log_s) / theta if total > 0 else 0.0


# ----------------------------------------------------- incomplete gamma, in logs


def _gamma_series(s: float, z: float) -> float:
    """sum_{n>=0} z**n / ((s+1)...(s+n)) / s: the series of P(s, z) = z**s e**-z / Gamma(s) * this. Use for z < s+1."""
    term = 1.0 / s
    total = term
    ap = s
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= z / ap
        total += term
        if term < total * _EPS:
            return total
    raise ArithmeticError(f"incomplete gamma series did not converge (s={s}, z={z})")


def _log_gamma_q_cf(s: float, z: float) -> float:
    """log Q(s, z) by the continued fraction (modified Lentz). Use for z >= s+1."""
    b = z + 1.0 - s
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - s)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            return _log_prefix(s, z) + math.log(h)
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge (s={s}, z={z})")


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _log_prefix(s: float, z: float) -> float:
    """log(z**s e**-z / Gamma(s)), without the cancellation of its terms when s and z are large.

    -z + s log z - lgamma(s) = s (log1p(d) - d) + (s log s - s - lgamma(s)), d = (z - s)/s,
    and the last bracket is 0.5 log s - 0.5 log 2pi - (Stirling's tail).
    """
    if s < 10:
        return -z + s * math.log(z) - math.lgamma(s)
    d = (z - s) / s
    core = s * (math.log1p(d) - d)
    r = 1.0 / s
    r2 = r * r
    tail = r * (
        1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 * (1 / 1680 - r2 * (1 / 1188 - r2 * (691 / 360360 - r2 / 156)))))
    )
    return core + 0.5 * math.log(s) - _HALF_LOG_2PI - tail


def _log_gamma_p(s: float, z: float) -> float:
    """log P(s, z), the regularized lower incomplete gamma function."""
    if z <= 0:
        return -math.inf
    if z < s + 1:
        return _log_prefix(s, z) + math.log(_gamma_series(s, z))
    return _log1m_exp(_log_gamma_q_cf(s, z))


def _log_gamma_q(s: float, z: float) -> float:
    """log Q(s, z) = log(1 - P(s, z))."""
    if z <= 0:
        return 0.0
    if z < s + 1:
        return _log1m_exp(_log_gamma_p(s, z))
    return _log_gamma_q_cf(s, z)


def _log1m_exp(v: float) -> float:
    """log(1 - e**v) for v <= 0, accurate at both ends."""
    if v == -math.inf:
        return 0.0
    if v >= 0:
        return -math.inf
    return math.log(-math.expm1(v)) if v > -0.693 else math.log1p(-math.exp(v))


def _log1p_exp(v: float) -> float:
    """log(1 + e**v) without overflow."""
    return v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v))


# ------------------------------------------------------------------ staffing


def agents_needed(
    arrival_rate: float,
    aht: float,
    *,
    target_wait: float = 20.0,
    service_level: float = 0.8,
    max_abandon: float | None = None,
    patience: float | None = None,
    max_agents: int = 100_000,
) -> tuple[int, Metrics]:
    """The fewest agents meeting ``service_level`` within ``target_wait`` (and ``max_abandon``).

    Erlang A with ``patience``, else Erlang C. Zero arrivals need zero agents.
    """
    if arrival_rate == 0:
        return 0, Metrics(p_wait=0.0, p_block=0.0, asa_s=0.0, service_level=1.0, p_abandon=0.0, occupancy=0.0)
    _check_inputs(arrival_rate, aht, 1, target_wait)
    if not 0 <= service_level <= 1:
        raise ErlangError(f"service level target must be within 0..1, got {service_level}")
    load = arrival_rate * aht
    log_a = math.log(load)
    log_b = 0.0
    use_a = patience is not None and math.isfinite(patience)
    for n in range(1, max_agents + 1):
        log_b = log_a + log_b - (math.log(n) + _log1p_exp(log_a + log_b - math.log(n)))
        if use_a:
            assert patience is not None
            m = _metrics_a(arrival_rate, aht, n, patience, target_wait, log_b)
        elif load < n:
            m = _metrics_c(arrival_rate, aht, n, target_wait, log_b)
        else:
            continue
        if m.service_level >= service_level and (max_abandon is None or m.p_abandon <= max_abandon):
            return n, m
    raise ErlangError(f"no staffing up to {max_agents} agents meets the target")


# ------------------------------------------------------------------ checks


def _check_agents(agents: int) -> None:
    if isinstance(agents, bool) or not isinstance(agents, int) or agents < 1:
        raise ErlangError(f"agents must be a whole number >= 1, got {agents!r}")


def _check_inputs(arrival_rate: float, aht: float, agents: int, target_wait: float) -> None:
    _check_agents(agents)
    if not (math.isfinite(arrival_rate) and arrival_rate >= 0):
        raise ErlangError(f"arrival rate must be a finite number >= 0 calls per second, got {arrival_rate}")
    if not (math.isfinite(aht) and aht > 0):
        raise ErlangError(f"AHT must be more than 0 seconds, got {aht}")
    if not target_wait >= 0:
        raise ErlangError(f"target wait must be >= 0 seconds, got {target_wait}")


# ------------------------------------------------------------------ command line


def run_cli(
    model: str,
    arrival_rate: float,
    aht: float,
    agents: int,
    patience: float | None,
    target_wait: float,
    as_json: bool,
) -> tuple[int, str]:
    """``frontdesk erlang``: (exit status, text to print)."""
    import json

    try:
        m = evaluate(model, arrival_rate, aht, agents, patience=patience, target_wait=target_wait)  # type: ignore[arg-type]
    except ErlangError as exc:
        return 2, f"erlang: {exc}"
    if as_json:
        return 0, json.dumps(m.as_dict())
    load = arrival_rate * aht
    names = {"b": "Erlang B (M/M/N/N)", "c": "Erlang C (M/M/N)", "a": "Erlang A (M/M/N+M)"}
    lines = [
        f"{names[model]}: {arrival_rate:g} calls/s x AHT {aht:g} s = {load:.4g} Erlangs on {agents} agents"
        + (f", mean patience {patience:g} s" if model == "a" and patience is not None else ""),
        f"  p_wait         {m.p_wait:.6f}   an arriving caller waits",
        f"  p_block        {m.p_block:.6f}   lost at once (Erlang B)",
        f"  asa_s          {_fmt(m.asa_s)}   mean wait of answered callers, seconds",
        f"  service_level  {m.service_level:.6f}   answered within {target_wait:g} s, share of offered",
        f"  p_abandon      {m.p_abandon:.6f}   hang up before an agent answers",
        f"  occupancy      {m.occupancy:.6f}   carried load per agent",
    ]
    if model == "c" and load >= agents:
        lines.append(f"  (the load {load:.4g} Erlangs needs more than {agents} agents: the line grows without end)")
    return 0, "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:.6f}" if math.isfinite(v) else "inf"


__all__ = [
    "MODELS",
    "ErlangError",
    "Metrics",
    "agents_needed",
    "erlang_b",
    "erlang_c",
    "evaluate",
    "log_erlang_b",
    "log_tail_weight",
]

"""sim/erlang.py: published Erlang C examples, a slow exact implementation on a grid, stability at N = 1000."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from ivr.cli import main as cli_main
from sim.erlang import ErlangError, agents_needed, erlang_b, erlang_c, evaluate

# ------------------------------------------------------------ published examples


def test_call_centre_helper_worked_example() -> None:
    """ "Erlang C Formula - Made Simple With an Easy Worked Example", Call Centre Helper
    (https://www.callcentrehelper.com/erlang-c-formula-example-121281.htm): 100 calls in
    30 minutes, AHT 180 s, target 80 % answered in 20 s. Traffic 10 Erlangs; with 11
    agents the probability of waiting is 68.21 % and the service level 39 %; 14 agents are
    needed (88.8 %), with an ASA of 7.8 s, 82.6 % answered immediately and 71.4 % occupancy.
    """
    rate = 100 / 1800
    m = evaluate("c", rate, 180, 11, target_wait=20)
    assert m.p_wait == pytest.approx(0.6821, abs=5e-5)
    assert m.service_level == pytest.approx(0.39, abs=0.005)
    m = evaluate("c", rate, 180, 14, target_wait=20)
    assert m.service_level == pytest.approx(0.888, abs=0.001)
    assert m.asa_s == pytest.approx(7.8, abs=0.05)
    assert 1 - m.p_wait == pytest.approx(0.826, abs=0.0005)
    assert m.occupancy == pytest.approx(0.714, abs=0.0005)
    n, _ = agents_needed(rate, 180, target_wait=20, service_level=0.8)
    assert n == 14


def test_erlang_b_table() -> None:
    """The published Erlang B tables (any traffic engineering handbook): 10 circuits carry 4.461 Erlangs
    at 1 % blocking, 1 circuit 0.0101 Erlangs; and the classic check value B(10, 5) = 0.018385."""
    assert erlang_b(10, 4.461) == pytest.approx(0.01, abs=2e-5)
    assert erlang_b(1, 0.0101) == pytest.approx(0.01, abs=1e-4)
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, abs=1e-6)


# ------------------------------------------------- a slow, exact implementation


def _direct_b(n: int, load: Fraction) -> Fraction:
    terms = [load**k / math.factorial(k) for k in range(n + 1)]
    return terms[-1] / sum(terms)


def _direct_c(n: int, load: Fraction) -> Fraction:
    top = load**n / math.factorial(n) * Fraction(n) / (n - load)
    return top / (sum(load**k / math.factorial(k) for k in range(n)) + top)


def _direct_a(n: int, rate: Fraction, aht: Fraction, patience: Fraction, t: float) -> dict[str, float]:
    """M/M/n+M summed state by state: the chain's stationary law in exact fractions (truncated where the
    rest is below 1e-40), abandonment by Little's law, each waiting caller's fate by first-step analysis,
    and the service level by uniformization of the tagged caller's race against patience."""
    mu, theta = 1 / aht, 1 / patience
    weights = [Fraction(1)]
    for k in range(1, n + 1):
        weights.append(weights[-1] * rate / (k * mu))
    j = 0
    tail = [weights[-1]]  # pi_{n+j}, unnormalized
    while True:
        j += 1
        tail.append(tail[-1] * rate / (n * mu + j * theta))
        if j > 10 and tail[-1] < Fraction(1, 10**40) * tail[0]:
            break
    total = sum(weights[:-1]) + sum(tail)
    p_wait = sum(tail) / total
    queue = sum(i * w for i, w in enumerate(tail)) / total
    p_abandon = theta * queue / rate
    # a caller who finds j ahead: served with s_j, and E[wait; served] = m_j (exact recursions)
    served, waited = [], []
    s_prev, m_prev = Fraction(1), Fraction(0)
    for k in range(len(tail)):
        out = n * mu + k * theta + theta
        p = (n * mu + k * theta) / out
        s_k = p * s_prev
        m_k = s_k / out + p * m_prev
        served.append(s_k)
        waited.append(m_k)
        s_prev, m_prev = s_k, m_k
    answered = 1 - p_abandon
    asa = sum(w * m for w, m in zip(tail, waited, strict=True)) / total / answered
    # uniformization: u_k(t) = P(served by t | k ahead), all k at once
    k_max = len(tail)
    big = float(n * mu + k_max * theta)
    rates = [float(n * mu + k * theta) for k in range(k_max)]
    vec = [0.0] * k_max  # P^i applied to the indicator of "served", for states 0..k_max-1
    served_by_t = [0.0] * k_max
    lam_t = big * t
    i = 0
    while True:
        log_pois = -lam_t + i * math.log(lam_t) - math.lgamma(i + 1) if lam_t > 0 else (0.0 if i == 0 else -math.inf)
        weight = math.exp(log_pois)
        for k in range(k_max):
            served_by_t[k] += weight * vec[k]
        if i > lam_t + 40 * math.sqrt(lam_t + 1) + 50:
            break
        new = []
        for k in range(k_max):
            ahead_done = 1.0 if k == 0 else vec[k - 1]
            leave = rates[k] + float(theta)
            new.append((1 - leave / big) * vec[k] + rates[k] / big * ahead_done)
        vec = new
        i += 1
    within = float(1 - p_wait) + sum(float(w / total) * u for w, u in zip(tail, served_by_t, strict=True))
    return {
        "p_wait": float(p_wait),
        "p_abandon": float(p_abandon),
        "asa_s": float(asa),
        "service_level": within,
        "occupancy": float(rate * aht * answered / n),
    }


GRID_BC = [(n, Fraction(load_pct, 100) * n) for n in (1, 2, 3, 5, 8, 13, 21) for load_pct in (10, 50, 80, 95, 99)]


@pytest.mark.parametrize(("n", "load"), GRID_BC)
def test_erlang_b_and_c_agree_with_exact_sums(n: int, load: Fraction) -> None:
    aht = 180
    rate = load / aht
    assert erlang_b(n, float(load)) == pytest.approx(float(_direct_b(n, load)), rel=1e-12)
    c = _direct_c(n, load)
    assert erlang_c(n, float(load)) == pytest.approx(float(c), rel=1e-12)
    m = evaluate("c", float(rate), aht, n, target_wait=15)
    assert m.asa_s == pytest.approx(float(c * aht / (n - load)), rel=1e-11)
    assert m.service_level == pytest.approx(1 - float(c) * math.exp(-float(n - load) * 15 / aht), rel=1e-12, abs=1e-15)
    b = evaluate("b", float(rate), aht, n)
    assert (b.p_block, b.service_level) == (pytest.approx(float(_direct_b(n, load)), rel=1e-12), 1 - b.p_block)


GRID_A = [
    (n, load_pct, patience) for n in (1, 3, 8, 15) for load_pct in (50, 90, 120, 200) for patience in (30, 180, 600)
]


@pytest.mark.parametrize(("n", "load_pct", "patience"), GRID_A)
def test_erlang_a_agrees_with_exact_chain(n: int, load_pct: int, patience: int) -> None:
    aht = Fraction(180)
    rate = Fraction(load_pct, 100) * n / aht
    want = _direct_a(n, rate, aht, Fraction(patience), 20.0)
    got = evaluate("a", float(rate), float(aht), n, patience=patience, target_wait=20)
    assert got.p_wait == pytest.approx(want["p_wait"], rel=1e-10)
    assert got.p_abandon == pytest.approx(want["p_abandon"], rel=1e-9)
    assert got.asa_s == pytest.approx(want["asa_s"], rel=1e-9)
    assert got.service_level == pytest.approx(want["service_level"], abs=1e-9)
    assert got.occupancy == pytest.approx(want["occupancy"], rel=1e-9)


def test_erlang_a_tends_to_erlang_c_with_endless_patience() -> None:
    rate, aht, n = 9 / 180, 180.0, 10
    c = evaluate("c", rate, aht, n)
    a = evaluate("a", rate, aht, n, patience=1e9)
    assert a.p_wait == pytest.approx(c.p_wait, rel=1e-6)
    assert a.asa_s == pytest.approx(c.asa_s, rel=1e-5)
    assert a.service_level == pytest.approx(c.service_level, abs=1e-6)
    assert a.p_abandon < 1e-6


def test_service_level_grows_with_the_target_wait_to_the_answered_share() -> None:
    rate, aht, n, patience = 12 / 180, 180.0, 10, 90.0
    levels = [evaluate("a", rate, aht, n, patience=patience, target_wait=t).service_level for t in (0, 5, 20, 60, 600)]
    assert levels == sorted(levels)
    m = evaluate("a", rate, aht, n, patience=patience, target_wait=0)
    assert m.service_level == pytest.approx(1 - m.p_wait)
    far = evaluate("a", rate, aht, n, patience=patience, target_wait=1e6)
    assert far.service_level == pytest.approx(1 - far.p_abandon, abs=1e-12)


# ------------------------------------------------------------------ stability


def test_erlang_c_exact_at_a_thousand_agents() -> None:
    load = Fraction(990)
    want = float(_direct_c(1000, load))
    assert erlang_c(1000, 990.0) == pytest.approx(want, rel=1e-11)
    assert erlang_b(1000, 990.0) == pytest.approx(float(_direct_b(1000, load)), rel=1e-11)


@pytest.mark.parametrize("load_pct", [50, 90, 99, 100, 101, 110, 150, 300])
@pytest.mark.parametrize("patience", [10.0, 120.0, 3600.0])
def test_stable_at_a_thousand_agents_and_loads_above_them(load_pct: int, patience: float) -> None:
    n, aht = 1000, 180.0
    rate = load_pct / 100 * n / aht
    m = evaluate("a", rate, aht, n, patience=patience)
    for v in (m.p_wait, m.service_level, m.p_abandon, m.occupancy):
        assert 0.0 <= v <= 1.0
    assert math.isfinite(m.asa_s) and m.asa_s >= 0
    more = evaluate("a", rate, aht, n + 50, patience=patience)
    assert more.p_abandon <= m.p_abandon + 1e-12
    assert more.service_level >= m.service_level - 1e-12
    if load_pct >= 150:
        # many agents, heavy overload: the fluid limit, every agent busy and the surplus abandons
        assert m.p_abandon == pytest.approx(1 - n / (rate * aht), abs=0.01)
        assert m.occupancy == pytest.approx(1.0, abs=1e-3)
    c = evaluate("c", rate, aht, n)
    if load_pct >= 100:
        assert (c.p_wait, c.asa_s, c.service_level) == (1.0, math.inf, 0.0)
    else:
        assert 0 <= c.p_wait <= 1 and math.isfinite(c.asa_s)


def test_staffing_by_erlang_a_needs_fewer_agents_than_c_and_meets_the_cap() -> None:
    rate, aht = 50 / 900, 240.0
    n_c, mc = agents_needed(rate, aht, target_wait=20, service_level=0.8)
    n_a, ma = agents_needed(rate, aht, target_wait=20, service_level=0.8, patience=120, max_abandon=0.05)
    assert n_a <= n_c
    assert ma.service_level >= 0.8 and ma.p_abandon <= 0.05
    below = evaluate("a", rate, aht, n_a - 1, patience=120, target_wait=20)
    assert below.service_level < 0.8 or below.p_abandon > 0.05
    assert mc.service_level >= 0.8 > evaluate("c", rate, aht, n_c - 1, target_wait=20).service_level


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ErlangError):
        evaluate("a", 1.0, 180, 10)  # no patience
    with pytest.raises(ErlangError):
        evaluate("c", -1.0, 180, 10)
    with pytest.raises(ErlangError):
        evaluate("c", 1.0, 180, 0)


# ------------------------------------------------------------------ command line


def test_cli_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["erlang", "c", "--arrival-rate", str(100 / 1800), "--aht", "180", "--agents", "14", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"p_wait", "p_block", "asa_s", "service_level", "p_abandon", "occupancy"}
    assert data["service_level"] == pytest.approx(0.888, abs=0.001)
    rc = cli_main(["erlang", "c", "--arrival-rate", "1", "--aht", "180", "--agents", "14", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["asa_s"] is None  # unbounded: null, not Infinity
    rc = cli_main(
        ["erlang", "a", "--arrival-rate", "0.1", "--aht", "180", "--agents", "20", "--patience", "60",
         "--target-wait", "30"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "p_abandon" in out and "30 s" in out
    assert cli_main(["erlang", "a", "--arrival-rate", "0.1", "--aht", "180", "--agents", "20"]) == 2
    assert "patience" in capsys.readouterr().err

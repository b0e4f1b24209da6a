"""The anytime-valid test keeps its false-positive rate under repeated looks; a naive z-test does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneforge.monitor.sequential import (
    always_valid_p,
    compare,
    log_likelihood_ratios,
    observations_needed,
)

ALPHA = 0.05
N, EVERY, SIMS = 2000, 50, 1000
LOOKS = np.arange(EVERY, N + 1, EVERY) - 1  # a look every 50 observations: 40 looks
# Monte-Carlo margin: with SIMS runs the observed rate of a test whose true rate is 5% has a standard
# error of sqrt(0.05 * 0.95 / 1000) = 0.0069; 2.5 standard errors (0.017) bound it with ~99% confidence.
MARGIN = 2.5 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)


def _naive_rejects(x: np.ndarray, in_b: np.ndarray) -> bool:
    """A fixed-sample two-sample z-test repeated at every look (the mistake the mSPRT prevents)."""
    a, b = ~in_b, in_b
    n_a, n_b = np.cumsum(a)[LOOKS], np.cumsum(b)[LOOKS]
    s_a, s_b = np.cumsum(np.where(a, x, 0))[LOOKS], np.cumsum(np.where(b, x, 0))[LOOKS]
    q_a, q_b = np.cumsum(np.where(a, x * x, 0))[LOOKS], np.cumsum(np.where(b, x * x, 0))[LOOKS]
    m_a, m_b = s_a / n_a, s_b / n_b
    v_a, v_b = (q_a - n_a * m_a**2) / (n_a - 1), (q_b - n_b * m_b**2) / (n_b - 1)
    se = np.sqrt(v_a / n_a + v_b / n_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(m_b - m_a) / se
    return bool(np.nan_to_num(z > 1.959964).any())


def _simulate(draw, *, binary: bool, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    msprt = naive = 0
    for _ in range(SIMS):
        in_b = rng.random(N) < 0.5
        x = draw(rng, in_b)
        llr = log_likelihood_ratios(x, in_b, binary=binary)
        msprt += bool((llr[LOOKS] >= math.log(1 / ALPHA)).any())
        naive += _naive_rejects(x, in_b)
    return msprt / SIMS, naive / SIMS


@pytest.mark.parametrize(("label", "binary", "draw", "seed"), [
    ("error rate 10%", True, lambda rng, b: (rng.random(len(b)) < 0.10).astype(float), 1),
    ("error rate 2%", True, lambda rng, b: (rng.random(len(b)) < 0.02).astype(float), 2),
    ("lognormal latency", False, lambda rng, b: rng.lognormal(0.0, 1.0, len(b)), 3),
])
def test_no_difference_false_positive_rate_with_40_looks(label: str, binary: bool, draw, seed: int) -> None:
    msprt, naive = _simulate(draw, binary=binary, seed=seed)
    assert msprt <= ALPHA + MARGIN, f"{label}: mSPRT rejected {msprt:.3f} of A/A runs"
    # The same runs tested naively at every look reject far more often than 5%: the check is meaningful.
    assert naive > 2 * ALPHA, f"{label}: naive repeated z-test rejected only {naive:.3f}"


def test_a_real_difference_is_detected() -> None:
    rng = np.random.default_rng(7)
    detected, stopped = 0, []
    for _ in range(300):
        in_b = rng.random(N) < 0.5
        x = (rng.random(N) < np.where(in_b, 0.16, 0.10)).astype(float)  # 10% vs 16%
        llr = log_likelihood_ratios(x, in_b, binary=True)
        hits = np.flatnonzero(llr >= math.log(1 / ALPHA))
        if len(hits):
            detected += 1
            stopped.append(hits[0])
    assert detected / 300 >= 0.75, detected
    assert np.median(stopped) < N  # usually well before the end
    # a latency regression of 30% is found too
    in_b = rng.random(N) < 0.5
    lat = rng.lognormal(0.0, 0.5, N) * np.where(in_b, 1.3, 1.0)
    c = compare(lat, in_b, metric="latency_s")
    assert c is not None and c.significant and c.diff > 0 and c.cs_low > 0


def test_compare_reports_an_interval_that_covers_the_truth_and_a_running_p() -> None:
    rng = np.random.default_rng(3)
    in_b = rng.random(4000) < 0.3  # unequal split, as with a 30% canary
    x = rng.normal(np.where(in_b, 1.5, 1.0), 1.0)
    c = compare(x, in_b, metric="score")
    assert c is not None and c.n_a + c.n_b == 4000 and c.n_b == int(in_b.sum())
    assert c.cs_low <= 0.5 <= c.cs_high and c.significant and c.p_value <= ALPHA
    assert c.ci_low <= 0.5 <= c.ci_high
    # the anytime-valid interval is the price of peeking: wider than the single-look one
    assert (c.cs_high - c.cs_low) > (c.ci_high - c.ci_low)
    p = always_valid_p(x, in_b)
    assert np.all(np.diff(p) <= 0) and p[-1] == pytest.approx(c.p_value)  # never increases
    assert p[:10].tolist() == [1.0] * 10  # nothing is tested before the burn-in


def test_edge_cases() -> None:
    assert compare([1.0, 2.0], [False, False]) is None  # one arm empty
    few = compare([0.0, 1.0, 0.0, 1.0], [False, True, False, True], binary=True)
    assert few is not None and few.p_value == 1.0 and not few.significant  # below the burn-in
    const = compare(np.ones(200), np.arange(200) % 2 == 0)
    assert const is not None and not const.significant  # identical constant arms: no division by zero
    with pytest.raises(ValueError):
        compare([1.0], [True, False])
    with pytest.raises(ValueError):
        compare([1.0, 2.0], [True, False], alpha=1.5)


def test_observations_needed_shrinks_with_the_effect() -> None:
    big = observations_needed(0.09, 0.16, 0.5, 0.10)
    small = observations_needed(0.09, 0.10, 0.5, 0.01)
    assert big is not None and small is not None and big < small
    # at the predicted size a simulated difference of that size is usually detected
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(200):
        in_b = rng.random(big) < 0.5
        x = (rng.random(big) < np.where(in_b, 0.20, 0.10)).astype(float)
        hits += bool(compare(x, in_b, binary=True).significant)
    assert hits / 200 >= 0.4
    assert observations_needed(0.1, 0.1, 0.5, 0.0) is None

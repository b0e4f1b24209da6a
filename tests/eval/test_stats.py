"""Bootstrap CIs and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneforge.eval.stats import mean_ci, paired_diff_ci


def test_constant_values_have_a_zero_width_ci() -> None:
    e = mean_ci([0.7] * 20)
    assert (e.value, e.lo, e.hi, e.n) == (pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7), 20)


def test_ci_of_a_proportion_matches_the_normal_approximation() -> None:
    values = [1.0] * 60 + [0.0] * 40  # p = 0.6, n = 100: normal 95% half-width 1.96 * sqrt(.24 / 100) = 0.096
    e = mean_ci(values, resamples=4000, seed=1)
    assert e.value == pytest.approx(0.6)
    assert e.lo < 0.6 < e.hi
    assert (e.hi - e.lo) / 2 == pytest.approx(1.96 * math.sqrt(0.24 / 100), abs=0.015)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(5)
    values = list(rng.random(50))
    assert mean_ci(values, seed=3) == mean_ci(values, seed=3)
    assert mean_ci(values, seed=3) != mean_ci(values, seed=4)


def test_weighted_mean_is_a_ratio_of_sums() -> None:
    e = mean_ci([1.0, 3.0], [3, 1])  # (1*3 + 3*1) / 4
    assert e.value == pytest.approx(1.5)
    assert 1.0 <= e.lo <= e.hi <= 3.0


def test_paired_difference_is_significant_when_the_ci_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    shared = rng.random(40)  # large per-item variation shared by both models
    better = list(shared + 0.05)
    d = paired_diff_ci(better, list(shared))
    assert d.diff == pytest.approx(0.05) and d.lo == pytest.approx(0.05) and d.significant
    # An unpaired view of the same numbers would be swamped by the item variance: the pairing matters.
    a, b = mean_ci(better), mean_ci(list(shared))
    assert a.lo < b.hi
    same = paired_diff_ci(list(shared), list(shared))
    assert same.diff == 0.0 and not same.significant


def test_a_noisy_difference_is_not_significant() -> None:
    a = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    b = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    d = paired_diff_ci(a, b)
    assert d.diff == 0.0 and d.lo < 0 < d.hi and not d.significant

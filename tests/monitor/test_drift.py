"""Drift statistics on synthetic samples: calibrated under no drift, sensitive to a shift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneforge.monitor import drift


def test_mmd_false_alarm_rate_on_same_distribution_is_about_alpha() -> None:
    alpha, runs = 0.1, 40
    p_values = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        ref, cur = rng.normal(size=(60, 8)), rng.normal(size=(40, 8))
        p_values.append(drift.mmd_test(ref, cur, permutations=100, seed=seed).p_value)
    alarms = sum(p < alpha for p in p_values)
    # Expected 4 of 40; 10 or more would happen by chance with probability < 0.5% if calibrated.
    assert alarms <= 9
    # Under "no drift" p-values are roughly uniform, not stuck near 1 (a test that never alarms).
    assert 0.3 < float(np.mean(p_values)) < 0.7


def test_mmd_alarms_on_a_mean_shift_and_on_a_different_spread() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(80, 8))
    shifted = rng.normal(size=(50, 8)) + np.array([0.8] + [0.0] * 7)
    wider = rng.normal(size=(50, 8)) * 1.8
    for cur in (shifted, wider):
        res = drift.mmd_test(ref, cur, permutations=200, seed=0)
        assert res.p_value < 0.01
        assert res.n_reference == 80 and res.n_current == 50
    same = drift.mmd_test(ref, rng.normal(size=(50, 8)), permutations=200, seed=0)
    assert same.p_value > 0.01 and same.mmd2 < drift.mmd_test(ref, shifted, permutations=50).mmd2


def test_mmd_is_reproducible_and_subsamples() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    a = drift.mmd_test(ref, cur, permutations=100, seed=3, max_samples=50)
    b = drift.mmd_test(ref, cur, permutations=100, seed=3, max_samples=50)
    assert a == b and a.n_reference == 50 and a.n_current == 50
    with pytest.raises(ValueError, match="same width"):
        drift.mmd_test(ref, cur[:, :3])


def test_psi_is_small_for_the_same_lengths_and_large_for_longer_prompts() -> None:
    rng = np.random.default_rng(0)
    ref = rng.poisson(120, size=2000)
    assert drift.psi(ref, rng.poisson(120, size=400)) < 0.1
    assert drift.psi(ref, rng.poisson(200, size=400)) > 1.0
    # All current values in one reference bin: empty bins are floored, not infinite.
    value = drift.psi(ref, np.full(100, 500))
    assert np.isfinite(value) and value > 2.0
    # Discrete values with heavy ties still give bins (duplicate quantile edges are merged).
    assert drift.psi([5] * 90 + [6] * 10, [5] * 88 + [6] * 12) < 0.05


def test_psi_matches_the_definition_on_hand_made_bins() -> None:
    ref = np.repeat([1.0, 2.0], 50)  # one edge at the median: bins (<=1) and (>1), each 50%
    cur = np.array([1.0] * 20 + [2.0] * 80)
    want = (0.2 - 0.5) * np.log(0.2 / 0.5) + (0.8 - 0.5) * np.log(0.8 / 0.5)
    assert drift.psi(ref, cur, bins=2) == pytest.approx(want)


def test_prompt_text_comes_from_messages_else_from_the_rendered_chatml_prompt() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my invoice?"}]
    assert drift.row_prompt_text({"messages": msgs, "prompt": "ignored"}) == "Where is my invoice?"
    assert drift.row_prompt_text({"messages": json.dumps(msgs), "prompt": None}) == "Where is my invoice?"
    rendered = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is my invoice?<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert drift.row_messages({"messages": None, "prompt": rendered}) == msgs
    assert drift.row_prompt_text({"messages": None, "prompt": "plain completion text"}) == "plain completion text"

"""Anytime-valid comparison of two variants: the mixture sequential probability ratio test (mSPRT).

A fixed-sample z or t test is valid for one look only: reading an A/B report every hour and acting
on the first p < 0.05 inflates false positives several-fold. The mSPRT (Robbins 1970; Johari,
Pekelis and Walsh 2017, "Always valid inference") tracks a likelihood ratio that mixes the
alternative over a normal prior on the difference, theta ~ N(0, tau^2). Under no difference it is a
non-negative martingale with mean 1, so by Ville's inequality it ever reaches 1/alpha with
probability at most alpha: stopping at any look, as often as one likes, keeps the error rate.

The difference of means is tracked with the normal approximation (the two-stream form of Johari et
al.): theta_hat = mean_b - mean_a with variance V = var_a/n_a + var_b/n_b from plug-in variances,
which covers binary metrics (error rate, JSON validity, thumbs) and continuous ones (latency,
scores) alike. tau is set on the standardised scale (tau = phi * pooled sd), so one default suits
metrics of any unit. Inverting the test gives a confidence sequence: intervals that cover the true
difference at every look simultaneously with probability 1 - alpha.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.05
# Mixture sd of the standardised effect: the test is most sensitive to effects of about this many
# standard deviations. 0.2 (a "small" effect) suits canaries compared over hundreds of requests.
DEFAULT_PHI = 0.2
# The plug-in variance is unreliable on a handful of observations (a binary metric with no event yet
# has a variance near 0), so prefixes with fewer observations per arm are not tested.
DEFAULT_BURN_IN = 20


@dataclass(frozen=True)
class Comparison:
    """Variant B against variant A on one metric, at the latest observation."""

    metric: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    ci_low: float  # fixed-sample (1 - alpha) normal interval: valid for a single look only
    ci_high: float
    cs_low: float  # anytime-valid confidence sequence: valid at every look
    cs_high: float
    p_value: float  # always-valid p-value (running minimum of 1 / likelihood ratio)
    significant: bool  # p_value <= alpha: a difference, whenever one looks
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Path:
    """Per-prefix statistics of a merged stream (index i: the first i + 1 observations)."""

    n_a: np.ndarray
    n_b: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray
    var_a: np.ndarray
    var_b: np.ndarray
    v: np.ndarray  # variance of the difference estimate
    tau2: np.ndarray
    tested: np.ndarray  # both arms past the burn-in


def _path(values: np.ndarray, in_b: np.ndarray, *, binary: bool, phi: float, burn_in: int) -> _Path:
    x = np.asarray(values, dtype=float)
    b = np.asarray(in_b, dtype=bool)
    if x.shape != b.shape or x.ndim != 1:
        raise ValueError("values and in_b must be 1-D arrays of the same length")
    a = ~b
    n_a, n_b = np.cumsum(a), np.cumsum(b)
    s_a, s_b = np.cumsum(np.where(a, x, 0.0)), np.cumsum(np.where(b, x, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a, mean_b = s_a / n_a, s_b / n_b
        if binary:
            # Half a pseudo-event keeps the variance of an all-0 or all-1 arm away from 0.
            pa, pb = (s_a + 0.5) / (n_a + 1), (s_b + 0.5) / (n_b + 1)
            var_a, var_b = pa * (1 - pa), pb * (1 - pb)
            pooled = (s_a + s_b + 0.5) / (n_a + n_b + 1)
            var_pooled = pooled * (1 - pooled)
        else:
            q_a, q_b = np.cumsum(np.where(a, x * x, 0.0)), np.cumsum(np.where(b, x * x, 0.0))
            ss_a = np.maximum(q_a - n_a * mean_a**2, 0.0)
            ss_b = np.maximum(q_b - n_b * mean_b**2, 0.0)
            var_a, var_b = ss_a / np.maximum(n_a - 1, 1), ss_b / np.maximum(n_b - 1, 1)
            var_pooled = (ss_a + ss_b) / np.maximum(n_a + n_b - 2, 1)
            # A constant metric (all latencies equal to the clock's resolution) must not divide by 0.
            floor = 1e-12 * np.maximum(1.0, np.abs(np.concatenate([[1.0], x])).max())
            var_a, var_b = np.maximum(var_a, floor), np.maximum(var_b, floor)
            var_pooled = np.maximum(var_pooled, floor)
        v = var_a / n_a + var_b / n_b
    tested = (n_a >= max(burn_in, 2)) & (n_b >= max(burn_in, 2))
    return _Path(n_a, n_b, mean_a, mean_b, var_a, var_b, v, phi**2 * var_pooled, tested)


def _log_lr(diff: np.ndarray, v: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    return 0.5 * np.log(v / (v + tau2)) + diff**2 * tau2 / (2 * v * (v + tau2))


def _half_width(v: np.ndarray | float, tau2: np.ndarray | float, alpha: float) -> Any:
    """Half-width of the confidence sequence: the |theta_hat - theta0| at which the mixture
    likelihood ratio of theta0 reaches 1/alpha."""
    return np.sqrt(2 * v * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * np.log((v + tau2) / v)))


def log_likelihood_ratios(values: Any, in_b: Any, *, binary: bool = False, phi: float = DEFAULT_PHI,
                          burn_in: int = DEFAULT_BURN_IN) -> np.ndarray:
    """log of the mixture likelihood ratio after each observation of the merged stream (``in_b``
    says which arm each value belongs to, in arrival order); -inf before the burn-in."""
    p = _path(np.asarray(values), np.asarray(in_b), binary=binary, phi=phi, burn_in=burn_in)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _log_lr(p.mean_b - p.mean_a, p.v, p.tau2)
    return np.where(p.tested, out, -np.inf)


def always_valid_p(values: Any, in_b: Any, *, binary: bool = False, phi: float = DEFAULT_PHI,
                   burn_in: int = DEFAULT_BURN_IN) -> np.ndarray:
    """The always-valid p-value after each observation: min over earlier prefixes of 1/Lambda."""
    llr = log_likelihood_ratios(values, in_b, binary=binary, phi=phi, burn_in=burn_in)
    return np.minimum(1.0, np.exp(-np.maximum.accumulate(llr)))


def compare(values: Any, in_b: Any, *, metric: str = "", binary: bool = False, alpha: float = DEFAULT_ALPHA,
            phi: float = DEFAULT_PHI, burn_in: int = DEFAULT_BURN_IN) -> Comparison | None:
    """B against A over the whole stream, with every prefix counted as a look (so the p-value and the
    interval are those a reader would have had, however often they looked). None when an arm is empty."""
    x, b = np.asarray(values, dtype=float), np.asarray(in_b, dtype=bool)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n_b = int(b.sum())
    n_a = len(b) - n_b
    if n_a == 0 or n_b == 0:
        return None
    p = _path(x, b, binary=binary, phi=phi, burn_in=burn_in)
    mean_a, mean_b = float(p.mean_a[-1]), float(p.mean_b[-1])
    diff = mean_b - mean_a
    z = _normal_quantile(1 - alpha / 2)
    se = math.sqrt(float(p.v[-1])) if n_a > 1 and n_b > 1 else float("inf")
    ci = (diff - z * se, diff + z * se)
    idx = np.flatnonzero(p.tested)
    if len(idx) == 0:  # too few observations to test: no evidence either way
        return Comparison(metric, n_a, n_b, mean_a, mean_b, diff, *ci, -math.inf, math.inf, 1.0, False, alpha)
    d = (p.mean_b - p.mean_a)[idx]
    v, tau2 = p.v[idx], p.tau2[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        llr = _log_lr(d, v, tau2)
        h = _half_width(v, tau2, alpha)
    p_value = float(min(1.0, math.exp(-float(llr.max()))))
    # The running intersection of the intervals is itself a confidence sequence, and never wider.
    lo, hi = float((d - h).max()), float((d + h).min())
    if lo > hi:  # an empty intersection (a rare miss): report the latest interval
        lo, hi = float(d[-1] - h[-1]), float(d[-1] + h[-1])
    return Comparison(metric, n_a, n_b, mean_a, mean_b, diff, *ci, lo, hi, p_value, p_value <= alpha, alpha)


def observations_needed(var_a: float, var_b: float, share_b: float, effect: float, *,
                        alpha: float = DEFAULT_ALPHA, phi: float = DEFAULT_PHI, limit: int = 10**9) -> int | None:
    """Total observations (both arms, B taking ``share_b`` of them) at which the confidence sequence's
    half-width falls to ``|effect|``: when a true difference of that size is expected to show. None
    when it would take more than ``limit``."""
    effect = abs(effect)
    if effect <= 0 or not 0 < share_b < 1:
        return None
    var_a, var_b = max(var_a, 1e-12), max(var_b, 1e-12)
    tau2 = phi**2 * ((1 - share_b) * var_a + share_b * var_b)

    def width(n: float) -> float:
        v = var_a / (n * (1 - share_b)) + var_b / (n * share_b)
        return float(_half_width(v, tau2, alpha))

    lo, hi = 2.0, 4.0
    while width(hi) > effect:
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:  # the width falls monotonically with n once past the mixture's scale
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if width(mid) > effect else (lo, mid)
    return int(math.ceil(hi))


def _normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))

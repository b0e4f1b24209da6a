"""Aggregates with percentile-bootstrap confidence intervals, and paired differences between models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, object]:
        return {"value": _r(self.value), "ci": [_r(self.lo), _r(self.hi)], "n": self.n}


def _r(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def mean_ci(values: list[float], weights: list[float] | None = None, *, resamples: int = 1000, seed: int = 0,
            level: float = 0.95) -> Estimate:
    """Weighted mean of ``values`` with a percentile bootstrap CI over items (fixed seed)."""
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    n = len(v)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float((v * w).sum() / w.sum())
    idx = _indices(n, resamples, seed)
    stats = (v[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-12)
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return Estimate(value, float(lo), float(hi), n)


@dataclass(frozen=True)
class Difference:
    diff: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """The CI of the difference excludes 0."""
        return self.n > 0 and (self.lo > 0 or self.hi < 0)


def paired_diff_ci(a: list[float], b: list[float], weights: list[float] | None = None, *, resamples: int = 1000,
                   seed: int = 0, level: float = 0.95) -> Difference:
    """mean(a) - mean(b) on the same items, resampling items jointly (paired bootstrap)."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = np.ones_like(va) if weights is None else np.asarray(weights, dtype=float)
    n = len(va)
    if n == 0:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    d = va - vb
    value = float((d * w).sum() / w.sum())
    idx = _indices(n, resamples, seed)
    stats = (d[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-12)
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return Difference(value, float(lo), float(hi), n)

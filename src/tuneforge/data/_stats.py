"""Token-length statistics with bounded memory (one small int per kept row)."""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TokenStats:
    count: int
    total: int
    min: int
    mean: float
    p50: int
    p90: int
    p99: int
    max: int
    histogram: list[tuple[int, int, int]]  # (bin start, bin end, rows)

    def to_dict(self) -> dict:
        return asdict(self)


def token_stats(lengths: array, bins: int = 20) -> TokenStats:
    if not lengths:
        return TokenStats(0, 0, 0, 0.0, 0, 0, 0, 0, [])
    ordered = sorted(lengths)
    n = len(ordered)

    def pct(q: float) -> int:
        return ordered[min(n - 1, int(q * n))]

    lo, hi = ordered[0], ordered[-1]
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for v in ordered:
        counts[min(bins - 1, (v - lo) // width)] += 1
    hist = [(lo + i * width, lo + (i + 1) * width, c) for i, c in enumerate(counts)]
    while hist and hist[-1][2] == 0:
        hist.pop()
    return TokenStats(n, sum(ordered), lo, round(sum(ordered) / n, 1), pct(0.5), pct(0.9), pct(0.99), hi, hist)

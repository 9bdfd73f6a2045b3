"""Intervals for the accuracy experiments: over seeds, over test records, and paired differences.

- `seed_interval(values)`: mean and 95 % Student-t interval of per-seed accuracies (n ≥ 2; the
  t quantile for n-1 degrees of freedom, 4.303 for three seeds).
- `wilson_interval(correct, n)`: 95 % Wilson score interval of one run's accuracy over n test
  records (for rows with a single seed: it is the test-set sampling noise only).
- `paired_bootstrap(a, b)`: the difference mean(b) − mean(a) over the *same* test records, with a
  95 % percentile interval from resampling the records with replacement (seeded, `resamples`
  draws). `a` and `b` are per-record scores; with several seeds pass each record's mean over
  seeds, so the interval is the test-set noise of the seed-averaged difference.
- `within_noise(interval)`: whether an interval of a difference contains 0.

Pure Python (no numpy/scipy), deterministic for a given seed.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1..30; beyond that the normal 1.96 is within 2 %
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % interval [low, high], and how many values it came from."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the two-sided 95 % Student-t quantile."""
    if df < 1:
        raise ValueError("a t interval needs at least two values (df >= 1)")
    return _T975[df - 1] if df <= len(_T975) else Z975


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean of per-seed values with the 95 % t interval (mean ± t·s/√n); needs two values or more."""
    n = len(values)
    if n < 2:
        raise ValueError("a seed interval needs at least two seeds")
    mean = statistics.fmean(values)
    half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def wilson_interval(correct: float, n: int) -> Interval:
    """The 95 % Wilson score interval of a proportion `correct / n` (clipped to [0, 1])."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    p = correct / n
    z2 = Z975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0) -> Interval:
    """mean(b) − mean(a) over the same records, with a 95 % percentile interval from resampling records."""
    n = len(a)
    if n == 0 or len(b) != n:
        raise ValueError(f"paired scores need the same non-zero number of records (got {len(a)} and {len(b)})")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low = means[int(math.floor(0.025 * (resamples - 1)))]
    high = means[int(math.ceil(0.975 * (resamples - 1)))]
    return Interval(sum(diffs) / n, low, high, n)


def mean_over_seeds(per_seed_scores: Sequence[Sequence[float]]) -> list[float]:
    """Each record's mean score over seeds (all seeds scored the same records in the same order)."""
    if not per_seed_scores:
        raise ValueError("no seeds")
    n = len(per_seed_scores[0])
    if any(len(scores) != n for scores in per_seed_scores):
        raise ValueError("every seed must score the same records")
    return [statistics.fmean(column) for column in zip(*per_seed_scores, strict=True)]


def within_noise(interval: Interval) -> bool:
    """Whether a difference's interval contains zero."""
    return interval.low <= 0 <= interval.high

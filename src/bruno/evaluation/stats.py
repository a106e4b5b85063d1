"""Small statistics: Wilson score intervals for rates, bootstrap intervals for means, and the summary-metric object
used in metrics.json."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 10_000


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"invalid counts: {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_metric(successes: int, n: int) -> dict[str, Any]:
    """A rate as stored in metrics.json: value, n, count and 95 % Wilson interval."""
    lo, hi = wilson_interval(successes, n)
    return {"value": successes / n if n else None, "n": n, "count": successes, "ci95": [lo, hi]}


def bootstrap_interval(
    values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean (seeded, so the same values give the same interval).

    Unlike the normal approximation it stays within the values' range: a mean of non-negative values (a KL) never
    gets a negative bound, and a few large values (one prompt carrying much of a KL) widen the upper side only."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def mean_metric(values: list[float]) -> dict[str, Any]:
    """A mean with n and a percentile-bootstrap 95 % interval (`bootstrap_interval`)."""
    n = len(values)
    if n == 0:
        return {"value": None, "n": 0, "ci95": [None, None]}
    mean = sum(values) / n
    if n == 1:
        return {"value": mean, "n": 1, "ci95": [mean, mean]}
    return {"value": mean, "n": n, "ci95": list(bootstrap_interval(values))}

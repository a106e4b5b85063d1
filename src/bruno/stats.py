"""Small statistics: Wilson score intervals for rates and the summary-metric object used in metrics.json."""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054


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


def mean_metric(values: list[float]) -> dict[str, Any]:
    """A mean with n and a normal-approximation 95 % interval (t-free; fine for n >= 30, stated in the report)."""
    n = len(values)
    if n == 0:
        return {"value": None, "n": 0, "ci95": [None, None]}
    mean = sum(values) / n
    if n == 1:
        return {"value": mean, "n": 1, "ci95": [mean, mean]}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return {"value": mean, "n": n, "ci95": [mean - half, mean + half]}

"""Wilson intervals on known counts; refusal marker normalisation."""

from __future__ import annotations

import pytest

from bruno.evaluation.refusal import MarkerDetector, normalize_response
from bruno.evaluation.stats import Z95, bootstrap_interval, mean_metric, rate_metric, wilson_interval


def test_wilson_known_values():
    # Reference values (Wilson score interval, z = 1.96): 0/10, 5/10, 10/10, 1/100
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(1, 100) == pytest.approx((0.0018, 0.0545), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rate_and_mean_metrics():
    m = rate_metric(3, 4)
    assert m["value"] == 0.75 and m["n"] == 4 and m["count"] == 3
    assert m["ci95"][0] < 0.75 < m["ci95"][1]
    mm = mean_metric([1.0, 2.0, 3.0])
    assert mm["value"] == 2.0 and mm["ci95"][0] < 2.0 < mm["ci95"][1]
    assert mean_metric([1.0, 2.0, 3.0]) == mm  # seeded


def test_bootstrap_interval_of_the_mean():
    assert bootstrap_interval([0.5] * 20) == (0.5, 0.5)
    # Symmetric data, n = 200: close to the normal interval mean +- 1.96 s / sqrt(n).
    values = [float(i % 10) for i in range(200)]
    mean, sd = sum(values) / 200, (sum((v - 4.5) ** 2 for v in values) / 199) ** 0.5
    lo, hi = bootstrap_interval(values)
    assert lo == pytest.approx(mean - Z95 * sd / 200**0.5, abs=0.05)
    assert hi == pytest.approx(mean + Z95 * sd / 200**0.5, abs=0.05)
    # Skewed non-negative data (one large value among 99 zeros): the normal interval goes below 0, the bootstrap
    # interval stays at >= 0, and at 0 exactly when the large value is left out of 2.5 % of the resamples or more.
    skewed = [0.0] * 99 + [1.0]
    lo, hi = bootstrap_interval(skewed)
    assert lo == 0.0 and 0.02 < hi <= 0.04


def test_normalisation_and_markers():
    assert normalize_response("  I\u2019M   **Sorry**\n") == "i'm sorry"
    detector = MarkerDetector()
    verdicts = detector.classify(
        ["I can\u2019t help with that.", "Sure! Here is how to bake bread.", "   ", "As an AI, no."]
    )
    assert [v.is_refusal for v in verdicts] == [True, False, True, True]
    assert verdicts[2].detector == "empty"
    assert verdicts[0].matched == "i can'"
    assert not MarkerDetector(["nope"]).is_refusal("I'm sorry")

"""The paired bootstrap over queries, on hand-made cases with known answers."""

import numpy as np
import pytest

from dist_optical.compare.stats import correct_at_1, paired_bootstrap


def test_a_dominating_objective_has_the_binomial_interval():
    """a is right on 600 of 1000 queries, b on a subset of 500: the difference is 10 points, and each
    query's difference is 0/1 with p = 0.1, so the 95% interval is 10 +- 1.96 * 100 * sqrt(.09/1000)."""
    a = np.zeros(1000)
    a[:600] = 1
    b = np.zeros(1000)
    b[:500] = 1
    result = paired_bootstrap([a], [b], resamples=4000)
    half = 1.96 * 100 * np.sqrt(0.1 * 0.9 / 1000)
    assert result["diff"] == pytest.approx(10.0)
    assert result["low"] == pytest.approx(10.0 - half, abs=0.4)
    assert result["high"] == pytest.approx(10.0 + half, abs=0.4)
    assert result["significant"]


def test_swapped_wins_give_an_interval_around_zero():
    """Each side wins 50 queries the other loses, the rest agree: no difference, interval holds 0."""
    a = np.zeros(1000)
    b = np.zeros(1000)
    a[:50] = 1
    b[50:100] = 1
    result = paired_bootstrap([a], [b])
    assert result["diff"] == 0.0 and result["low"] < 0.0 < result["high"]
    assert not result["significant"]


def test_seeds_are_pooled_per_query_before_the_difference():
    """Two seeds of a: one right on every query, one on none -> 0.5 per query; b 0.5 flat."""
    a = [np.ones(200), np.zeros(200)]
    b = [np.full(200, 0.5)]
    result = paired_bootstrap(a, b)
    assert result == {**result, "diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}


def test_correct_at_1_and_misaligned_queries():
    assert correct_at_1([1, 2, 1, 7]).tolist() == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap([[1, 0]], [[1, 0, 1]])

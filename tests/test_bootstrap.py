"""The paired bootstrap over queries, on hand-made cases with known answers."""

import numpy as np
import pytest

from dist_optical.compare.stats import correct_at_1, paired_bootstrap, queries_needed, verdict


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


def ranks_with(right: int, total: int, start: int = 0) -> list[int]:
    """Synthetic gold ranks: queries start..start+right-1 are answered first (rank 1), the rest not."""
    return [1 if start <= q < start + right else 2 for q in range(total)]


def test_a_tiny_difference_on_many_queries_is_equivalent():
    """4,000 queries; a wins 20 that b loses and b wins 10 that a loses: +0.25 points, sd ~8.7, so
    the interval is about +-0.27 wide: inside +-1.5 and containing 0."""
    a = correct_at_1(ranks_with(2020, 4000))
    b = correct_at_1(ranks_with(2000, 4000))
    b[2020:2030] = 1
    result = verdict(paired_bootstrap([a], [b], resamples=2000))
    assert result["kind"] == "equivalent" and result["text"].startswith("equivalent within ±1.5")


def test_a_small_sample_is_undecided_and_says_how_many_queries_would_decide():
    """200 queries, a wins 6 more than b (10 vs 4 discordant): +3 points, interval wider than +-1.5
    and containing 0, so undecided; at that variance deciding needs far more queries than 200."""
    a = correct_at_1(ranks_with(110, 200))
    b = correct_at_1(ranks_with(100, 200))
    b[110:114] = 1
    test = paired_bootstrap([a], [b], resamples=2000)
    assert test["low"] < 0 < test["high"]
    result = verdict(test)
    assert result["kind"] == "undecided"
    assert result["needed"] == queries_needed(test["diff"], test["sd"]) > 200
    assert (
        f"~{result['needed'] - 200:,} more queries at this variance ({result['needed']:,} in all)"
        in result["text"]
    )


def test_a_clear_difference_is_better_or_worse_by_its_interval():
    a = correct_at_1(ranks_with(600, 1000))
    b = correct_at_1(ranks_with(500, 1000))
    assert verdict(paired_bootstrap([a], [b]))["text"].startswith("better by 10.0 [+")
    assert verdict(paired_bootstrap([b], [a]))["text"].startswith("worse by 10.0 [-")


def test_the_power_estimate_on_a_known_binomial_case():
    """Per-query differences +1 with p = 0.1, -1 with p = 0.05, else 0: mean 5 points, variance
    (0.15 - 0.05^2) x 100^2. To exclude 0 at 95%: n = (1.96 sd / 5)^2 = 226.7 -> 227. The
    equivalence route is closed (5 > 1.5). A difference of 0.4 point with the same sd is decided
    sooner as an equivalence ((1.96 sd / 1.1)^2: 1.1 from the margin) than as a difference
    ((1.96 sd / 0.4)^2)."""
    sd = 100 * np.sqrt(0.15 - 0.05**2)
    assert queries_needed(5.0, sd) == int(np.ceil((1.959964 * sd / 5) ** 2)) == 227
    assert queries_needed(0.4, sd) == int(np.ceil((1.959964 * sd / 1.1) ** 2))
    assert queries_needed(-0.4, sd) == queries_needed(0.4, sd)
    assert queries_needed(0.0, 0.0) is None
    # The estimate agrees with the bootstrap: at the estimated n the interval just excludes 0.
    n = 227 * 20
    a, b = np.zeros(n), np.zeros(n)
    a[: n // 10] = 1
    b[n // 10 : n // 10 + n // 20] = 1
    test = paired_bootstrap([a], [b], resamples=4000)
    assert test["sd"] == pytest.approx(sd, rel=1e-3) and test["diff"] == pytest.approx(5.0)
    half = (test["high"] - test["low"]) / 2
    assert half == pytest.approx(1.959964 * sd / np.sqrt(n), rel=0.1)


def test_the_opening_paragraph_is_three_sentences_read_off_the_verdicts():
    """Synthetic verdicts with known kinds: the tallies count them; each objective that is better
    (worse) somewhere is named once, with its range and its cells per language, in spec order."""
    from dist_optical.compare.verdicts import answer

    def judged(diff: float, low: float, high: float) -> dict:
        return verdict(
            {
                "diff": diff,
                "low": low,
                "high": high,
                "significant": low > 0 or high < 0,
                "sd": 30.0,
                "queries": 400,
            }
        )

    views = ["idx/src->tgt", "idx/tgt->src", "alone/src->tgt", "alone/tgt->src"]
    ot_nce = [judged(3.0, 1.0, 5.0), judged(50.0, 45.0, 55.0), judged(0.1, -0.9, 1.0), judged(0.5, -2.0, 3.0)]
    ot = [judged(-9.0, -12.0, -6.0), judged(4.0, 1.0, 7.0), judged(-2.0, -3.0, -1.0), judged(-1.0, -4.0, 2.0)]
    verdicts = {
        "wol": {
            "news": {
                "ot_nce": dict(zip(views, ot_nce, strict=True)),
                "ot": dict(zip(views, ot, strict=True)),
            },
            "rev": {"ot_nce": {views[0]: judged(6.0, 2.0, 10.0)}},
        },
        "ewe": {"news": {"ot_nce": {views[1]: judged(2.0, 0.5, 3.5)}}},
    }
    (paragraph, blank) = answer(verdicts)
    assert blank == ""
    counts, better, worse = paragraph.split(". ")
    # per objective, in spec order: better / worse / equivalent within ±1.5 / undecided
    assert counts.endswith("undecided: `ot_nce` 4 / 0 / 1 / 1, `ot` 1 / 2 / 0 / 1")
    # by how much (the smaller difference first) and in which languages, each objective named once
    ot_nce_better = "`ot_nce` by +2.0 to +50.0 points (cells: wol 3, ewe 1)"
    assert better == f"Better than InfoNCE: {ot_nce_better}; `ot` by +4.0 points (cells: wol 1)"
    assert worse == "Worse than InfoNCE: `ot` by -2.0 to -9.0 points (cells: wol 2)."
    assert answer({}) == []
    only_better = {"wol": {"news": {"ot_nce": dict(zip(views[:1], ot_nce[:1], strict=True))}}}
    assert answer(only_better)[0].endswith("No objective is worse than InfoNCE in any cell.")

"""Paired bootstrap over queries: is one objective's acc@1 really above another's?

Both objectives answer the same queries, so the question is about their per-query difference: a
query that one gets right and the other wrong counts, a query both get right (or wrong) does not.
Seeds are pooled by averaging each query's correctness over the objective's seeds first.

`verdict` turns an interval into what a reader may claim: a difference, an equivalence within a
margin, or neither, with the number of queries that would decide it at the observed variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 1000
# Differences inside +-MARGIN points of acc@1 are too small to matter to a user: "equivalent".
MARGIN = 1.5
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def correct_at_1(ranks: Sequence[int]) -> np.ndarray:
    """1-based gold ranks -> 0/1 per query (acc@1 is their mean)."""
    return (np.asarray(ranks) == 1).astype(np.float64)


def paired_bootstrap(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    resamples: int = RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """(seeds_a, Q) and (seeds_b, Q) per-query scores (e.g. 0/1 correct) -> the mean difference
    a - b in points (x100) and its percentile bootstrap interval over queries.

    Each resample draws Q queries with replacement and takes the mean of the per-query difference
    (each side first averaged over its seeds). ``significant``: the interval excludes 0.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"paired bootstrap needs the same queries on both sides: {a.shape[1]} vs {b.shape[1]}"
        )
    if a.shape[1] == 0:
        raise ValueError("paired bootstrap needs at least one query")
    diff = 100.0 * (a.mean(axis=0) - b.mean(axis=0))
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {
        "diff": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "significant": bool(low > 0.0 or high < 0.0),
        "sd": float(diff.std()),
        "queries": int(len(diff)),
        "resamples": resamples,
    }


def queries_needed(diff: float, sd: float, margin: float = MARGIN) -> int | None:
    """Queries at which a 95% interval of half-width Z95 * sd / sqrt(n) around ``diff`` would decide:
    exclude 0 (n > (Z95 sd / |diff|)^2) or fit inside +-margin (n > (Z95 sd / (margin - |diff|))^2),
    whichever comes first, taking the observed difference and spread as the truth (a normal
    approximation). None when neither can happen (diff 0 with no spread is already decided)."""
    gaps = [abs(diff), margin - abs(diff)]
    needs = [(Z95 * sd / gap) ** 2 for gap in gaps if gap > 0]
    return math.ceil(min(needs)) if needs and sd > 0 else None


def verdict(test: dict[str, float], margin: float = MARGIN) -> dict[str, object]:
    """One paired-bootstrap result -> {kind, text, interval, diff, needed}:
    - "better"/"worse": the interval excludes 0 ("better by X [lo, hi]");
    - "equivalent": the interval lies inside +-margin;
    - "undecided": neither; ``needed`` = `queries_needed` at the observed variance."""
    interval = f"[{test['low']:+.1f}, {test['high']:+.1f}]"
    judged = {"interval": interval, "diff": test["diff"], "needed": None}
    if test["significant"]:
        kind = "better" if test["diff"] > 0 else "worse"
        text = f"{kind} by {abs(test['diff']):.1f} {interval}"
        return {**judged, "kind": kind, "text": text}
    if -margin < test["low"] and test["high"] < margin:
        text = f"equivalent within ±{margin:g}: {test['diff']:+.1f} {interval}"
        return {**judged, "kind": "equivalent", "text": text}
    needed = queries_needed(test["diff"], test["sd"], margin)
    needed = needed and max(needed, test["queries"] + 1)  # the bootstrap, not the normal law, decides
    more = (
        f"~{needed - test['queries']:,} more queries at this variance ({needed:,} in all)"
        if needed
        else "more seeds"
    )
    text = f"undecided: {test['diff']:+.1f} {interval}; would need {more}"
    return {**judged, "kind": "undecided", "text": text, "needed": needed}

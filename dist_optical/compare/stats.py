"""Paired bootstrap over queries: is one objective's acc@1 really above another's?

Both objectives answer the same queries, so the question is about their per-query difference: a
query that one gets right and the other wrong counts, a query both get right (or wrong) does not.
Seeds are pooled by averaging each query's correctness over the objective's seeds first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 1000


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
        "queries": int(len(diff)),
        "resamples": resamples,
    }

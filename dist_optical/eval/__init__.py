"""Evaluation: the eval sets (sets.py), retrieval metrics (metrics.py), and an `Evaluator` that
scores encoders on every set of a run (evaluator.py)."""

"""Optimal transport: batched log-stabilised Sinkhorn and its diagnostics (pure tensor functions)."""

from dist_optical.ot.sinkhorn import epsilon_schedule, marginal_error, plan_entropy, sinkhorn

__all__ = ["epsilon_schedule", "marginal_error", "plan_entropy", "sinkhorn"]

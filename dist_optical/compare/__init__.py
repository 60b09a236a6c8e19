"""The comparison grid: objective x language x seed (x training-pair budget) -> results and report."""

from dist_optical.compare.runner import run_compare
from dist_optical.compare.spec import load_spec, plan

__all__ = ["load_spec", "plan", "run_compare"]

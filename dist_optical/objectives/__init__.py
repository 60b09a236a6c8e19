"""What the student is trained to minimise: the terms (token-level OT, OT-NCE, InfoNCE, MSE), one
table of them (registry.py: name -> function, needs, cost) and their weighted sum. Pure torch: never
torch.distributed or DeepSpeed (tests/test_layers.py)."""

from dist_optical.objectives.objective import Objective
from dist_optical.objectives.registry import TERMS, needs
from dist_optical.objectives.terms import idf_table

__all__ = ["TERMS", "Objective", "idf_table", "needs"]

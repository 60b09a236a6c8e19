"""Training: a run's setup (run.py), the loop that reads like the method (loop.py), what each step
logs (metrics.py), the dev curve (devcurve.py), and the export of the trained student (export.py)."""

from dist_optical.train.loop import train

__all__ = ["train"]

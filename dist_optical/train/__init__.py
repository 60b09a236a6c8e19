"""Training: a run's setup (run.py; what it takes from one read of the training pairs, prepare.py),
the loop that reads like the method (loop.py), what each step logs (metrics.py), the dev curve
(devcurve.py), the teacher cache (teacher_cache.py) and the export of the trained student (export.py)."""

from dist_optical.train.loop import train

__all__ = ["train"]

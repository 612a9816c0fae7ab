"""RULER-style synthetic evaluation tasks (see :mod:`longctx.eval.tasks`)."""

from longctx.eval.tasks import TASKS, Sample, count_tokens, is_correct, make_sample, make_samples

__all__ = ["TASKS", "Sample", "count_tokens", "is_correct", "make_sample", "make_samples"]

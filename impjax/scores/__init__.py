"""Scores: pure functions from params/grads pytrees to importance pytrees."""

from impjax.scores.criteria import Criterion, NAMES, criterion
from impjax.scores.fisher import fisher, fisher_per_sample, obd, per_sample_grads
from impjax.scores.gradients import movement, saliency, taylor, taylor_group
from impjax.scores.weights import magnitude, random

__all__ = [
    "Criterion", "NAMES", "criterion", "fisher", "fisher_per_sample", "obd",
    "per_sample_grads", "movement", "saliency", "taylor", "taylor_group", "magnitude", "random",
]

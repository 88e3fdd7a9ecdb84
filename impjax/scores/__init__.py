"""Scores: pure functions from params/grads pytrees to importance pytrees."""

from impjax.scores.criteria import Criterion, NAMES, criterion
from impjax.scores.fisher import fisher, fisher_per_sample, obd, per_sample_grads
from impjax.scores.gradients import movement, saliency, taylor, taylor_group
from impjax.scores.weights import magnitude, random

__all__ = [
    "Criterion", "NAMES", "criterion", "fisher", "fisher_per_sample", "obd",
    "per_sample_grads", "movement", "saliency", "taylor", "taylor_group", "magnitude", "random",
]

from impjax.scores.activations import (attention_received, block_influence_sums, means,
                                       token_gram, token_sums, wanda, wina)
from impjax.scores.heads import entropy_loss, entropy_taylor, gate_importance, gate_taylor

__all__ += [
    "attention_received", "block_influence_sums", "means", "token_gram", "token_sums", "wanda",
    "wina", "entropy_loss", "entropy_taylor", "gate_importance", "gate_taylor",
]

from impjax.scores.hessian import hawq, hutchinson, hvp, rademacher_like

__all__ += ["hawq", "hutchinson", "hvp", "rademacher_like"]

"""Scores: pure functions from params, gradients and activations to importance pytrees.

- ``weights``: magnitude and random scores. ``gradients``: saliency, Taylor (element and
  group), movement. ``fisher``: Fisher (batch and per-sample) and OBD.
- ``hessian``: Hutchinson trace estimates and HAWQ sensitivities.
- ``activations``: token statistics of captured activations (sums, grams), Wanda, WINA,
  attention received, block influence. ``heads``: head and unit gates, entropy-Taylor.
- ``criteria``: the criterion registry — each criterion's statistic, estimator and importance,
  consumed by every transform (:func:`criterion`, :func:`register_criterion`).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import scores
  >>> scores.taylor({"w": jnp.array([2.0, -1.0])}, {"w": jnp.array([0.5, 3.0])})["w"].tolist()
  [1.0, 3.0]
"""

from impjax.scores.activations import attention_received
from impjax.scores.activations import block_influence_sums
from impjax.scores.activations import means
from impjax.scores.activations import ria
from impjax.scores.activations import token_gram
from impjax.scores.activations import token_sums
from impjax.scores.activations import wanda
from impjax.scores.activations import wina
from impjax.scores.criteria import CRITERIA
from impjax.scores.criteria import Criterion
from impjax.scores.criteria import CriterionOptions
from impjax.scores.criteria import criterion
from impjax.scores.criteria import register_criterion
from impjax.scores.fisher import fisher
from impjax.scores.fisher import fisher_per_sample
from impjax.scores.fisher import obd
from impjax.scores.fisher import per_sample_grads
from impjax.scores.gradients import movement
from impjax.scores.gradients import saliency
from impjax.scores.gradients import taylor
from impjax.scores.gradients import taylor_group
from impjax.scores.heads import entropy_loss
from impjax.scores.heads import entropy_taylor
from impjax.scores.heads import gate_importance
from impjax.scores.heads import gate_taylor
from impjax.scores.hessian import hawq
from impjax.scores.hessian import hutchinson
from impjax.scores.hessian import hvp
from impjax.scores.hessian import rademacher_like
from impjax.scores.weights import magnitude
from impjax.scores.weights import random

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionOptions",
    "attention_received",
    "block_influence_sums",
    "criterion",
    "entropy_loss",
    "entropy_taylor",
    "fisher",
    "fisher_per_sample",
    "gate_importance",
    "gate_taylor",
    "hawq",
    "hutchinson",
    "hvp",
    "magnitude",
    "means",
    "movement",
    "obd",
    "per_sample_grads",
    "rademacher_like",
    "random",
    "register_criterion",
    "ria",
    "saliency",
    "taylor",
    "taylor_group",
    "token_gram",
    "token_sums",
    "wanda",
    "wina",
]

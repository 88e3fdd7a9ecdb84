"""Pruning without training: one-shot layer-sequential pruning of pretrained models, pruning in
re-scored rounds, structured pruning of coupled units and heads, and compaction.

- ``sparsegpt``: SparseGPT's inverse-Hessian pruning of one kernel with weight updates.
- ``dsnot``: DSnoT's prune-and-grow refinement of a one-shot mask, without training.
- ``layerwise``: layer-sequential magnitude / Wanda / SparseGPT over MiniLM's layers.
- ``rounds``: pruning to a target in re-scored cuts (:func:`prune_in_rounds`).
- ``structured``: entropy-Taylor unit scores of MiniLM's groups, AMP width search.
- ``compact``: slicing kept units out of the arrays (a smaller model, same outputs).
- ``dare``: DARE's random drop and rescale of fine-tuning deltas, and importance-scored
  delta pruning (:func:`dare`, :func:`prune_deltas`).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, pruning
  >>> g = {"mlp": groups.Coupled((("fc1/kernel", 1), ("fc2/kernel", 0)))}
  >>> params = {"fc1": {"kernel": jnp.ones((3, 4))}, "fc2": {"kernel": jnp.ones((4, 2))}}
  >>> pruning.compact(params, g, {"mlp": jnp.array([True, False, True, False])})["fc2"]["kernel"].shape
  (2, 2)
"""

from impjax.pruning.compact import compact
from impjax.pruning.dare import dare
from impjax.pruning.dare import deltas
from impjax.pruning.dare import prune_deltas
from impjax.pruning.dsnot import dsnot
from impjax.pruning.layerwise import METHODS
from impjax.pruning.layerwise import linear_paths
from impjax.pruning.layerwise import prune_kernel
from impjax.pruning.layerwise import prune_layerwise
from impjax.pruning.rounds import prune_in_rounds
from impjax.pruning.sparsegpt import inverse_hessian_factor
from impjax.pruning.sparsegpt import reconstruction_error
from impjax.pruning.sparsegpt import sparsegpt
from impjax.pruning.structured import amp_search
from impjax.pruning.structured import entropy_taylor_scores
from impjax.pruning.structured import keep_top
from impjax.pruning.structured import search_keep

__all__ = [
    "METHODS",
    "amp_search",
    "compact",
    "dare",
    "deltas",
    "dsnot",
    "entropy_taylor_scores",
    "inverse_hessian_factor",
    "keep_top",
    "linear_paths",
    "prune_deltas",
    "prune_in_rounds",
    "prune_kernel",
    "prune_layerwise",
    "reconstruction_error",
    "search_keep",
    "sparsegpt",
]

"""Per-leaf normalizers of group scores, applied before a global selection.

Reference: Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning" (LAMP):
``score(u) = s_u / sum_{v: s_v >= s_u} s_v`` over a leaf's scores sorted ascending.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups
  >>> groups.normalize({"k": jnp.array([1.0, 3.0])}, "max")["k"].tolist()
  [0.3333333432674408, 1.0]
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from impjax import tree_utils

NORMALIZERS = ("none", "l2", "max", "lamp")
_TINY = 1e-30


def lamp(scores: jnp.ndarray) -> jnp.ndarray:
  """LAMP scores of a flat vector of non-negative scores: ``s_u^2 / sum_{v >= u} s_v^2`` over
  the scores sorted ascending (ties keep their original order), Lee et al. 2021's formula with
  the score in the place of ``|w|`` — pass magnitudes (``p=1``), not squares.

  Example:
    >>> lamp(jnp.array([2.0, 1.0])).tolist()  # sorted [1, 2]: 1/5, 4/4
    [1.0, 0.20000000298023224]
  """
  order = jnp.argsort(scores, stable=True)
  squared = jnp.square(scores[order])
  tail = jnp.cumsum(squared[::-1])[::-1]
  return jnp.zeros_like(scores).at[order].set(squared / jnp.maximum(tail, _TINY))


def normalize_leaf(scores: jnp.ndarray, how: str) -> jnp.ndarray:
  """Normalizes one leaf's flat group scores: ``l2`` and ``max`` divide by the norm and by the
  largest magnitude (any sign keeps its order), ``lamp`` needs non-negative scores."""
  if how == "none" or scores.size == 0:
    return scores
  if how == "l2":
    return scores / jnp.maximum(jnp.linalg.norm(scores), _TINY)
  if how == "max":
    return scores / jnp.maximum(jnp.max(jnp.abs(scores)), _TINY)
  if how == "lamp":
    return lamp(scores)
  raise ValueError(f"Unknown normalizer '{how}'. Known: {NORMALIZERS}.")


def normalize(group_scores: Any, how: str = "none") -> Any:
  """Applies ``normalize_leaf`` to every leaf; ``lamp`` on concrete negative scores raises a
  ``ValueError`` naming the leaf."""
  if how not in NORMALIZERS:
    raise ValueError(f"Unknown normalizer '{how}'. Known: {NORMALIZERS}.")

  def leaf(path, s):
    if how == "lamp" and tree_utils.is_concrete(s) and np.any(np.asarray(s) < 0):
      raise ValueError(f"LAMP needs non-negative scores; leaf '{path}' has negative ones "
                       "(score magnitudes, e.g. |w| or |w * g|).")
    return normalize_leaf(s, how)
  return tree_utils.map_with_path(leaf, group_scores)

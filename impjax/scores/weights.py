"""Data-free scores computed from the weights alone: magnitude and seeded random.

References: magnitude pruning (Han et al. 2015, "Learning both Weights and Connections");
random pruning as the baseline of "Random Pruning" and DARE.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import scores
  >>> scores.magnitude({"w": jnp.array([-2.0, 1.0])}, p=2)["w"].tolist()
  [4.0, 1.0]
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from impjax import tree_utils


def magnitude(params: tree_utils.Params, p: int = 1) -> tree_utils.Importance:
  """``|w|^p`` for every leaf (``p`` is static: 1 or 2).

  Example:
    >>> magnitude({"w": jnp.array([-3.0])})["w"].tolist()
    [3.0]
  """
  if p not in (1, 2):
    raise ValueError(f"magnitude p must be 1 or 2, got {p}.")
  return jax.tree.map(lambda w: jnp.abs(w) ** p, params)


def random(key: jax.Array, params: tree_utils.Params) -> tree_utils.Importance:
  """Seeded uniform scores in [0, 1), independent per leaf (leaf path folded into the key).

  Example:
    >>> s = random(jax.random.key(0), {"w": jnp.zeros(3)})
    >>> bool(((s["w"] >= 0) & (s["w"] < 1)).all())
    True
  """
  def leaf(path, w):
    leaf_key = jax.random.fold_in(key, _path_seed(path))
    return jax.random.uniform(leaf_key, jnp.shape(w), jnp.float32)
  return tree_utils.map_with_path(leaf, params)


def _path_seed(path: str) -> int:
  """A stable 31-bit integer from a path string (Python's hash() is salted per process)."""
  value = 0
  for char in path.encode():
    value = (value * 131 + char) % (2**31 - 1)
  return value

"""Ranks and counts: the order of units by importance, and how many a width keeps.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import select
  >>> select.unit_ranks({"d": jnp.array([0.5, 2.0])})["d"].tolist(), select.num_kept(0.5, 4)
  ([1, 0], 2)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils

_ROUNDING = 1e-6


def num_kept(width: Any, num_units: int) -> Any:
  """``ceil(width * num_units)`` (float32, tolerant to rounding: ``0.6 * 5`` keeps 3), >= 1.

  Example:
    >>> num_kept(0.2, 256), num_kept(0.25, 256), num_kept(0.6, 5), num_kept(0.0, 8)
    (52, 64, 3, 1)
  """
  if tree_utils.is_concrete(width):
    product = np.float32(width) * np.float32(num_units) * np.float32(1.0 - _ROUNDING)
    return int(min(max(np.ceil(product), 1), num_units))
  product = jnp.asarray(width, jnp.float32) * num_units * jnp.float32(1.0 - _ROUNDING)
  return jnp.clip(jnp.ceil(product), 1, num_units).astype(jnp.int32)


def descending_ranks(scores: jax.Array) -> jax.Array:
  """Rank of every entry along the last axis by descending score, 0 first (ties: the lower
  index first), int32.

  Example:
    >>> descending_ranks(jnp.array([[0.5, 2.0, 0.5], [1.0, 0.0, 3.0]])).tolist()
    [[1, 0, 2], [1, 2, 0]]
  """
  order = jnp.argsort(scores, axis=-1, descending=True, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def unit_ranks(unit_importance: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Rank of every unit, 0 = most important (ties: the lower index first), int32.

  Example:
    >>> unit_ranks({"d": jnp.array([0.5, 2.0, 0.5])})["d"].tolist()
    [1, 0, 2]
  """
  return {m: descending_ranks(s) for m, s in unit_importance.items()}

"""N:M selection: keep exactly ``n`` of every ``m`` consecutive weights along an axis.

Reference: Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4 on Ampere);
Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch".
For Flax kernels ``(in, out)`` the contraction axis is 0. Ties are broken by position: the
earlier weight of a group is pruned first.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import select
  >>> select.n_of_m({"k": jnp.array([[1.0], [4.0], [3.0], [2.0]])}, 2, 4)["k"][:, 0].tolist()
  [False, True, True, False]
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

from impjax import tree_utils
from impjax.groups import granularity as gran


_PAIRWISE_M = 16
"""Groups up to this size are ranked by pairwise comparison (``m^2`` compares, no sort)."""


def _keep_largest(grouped: jax.Array, n: int) -> jax.Array:
  """The ``n`` largest entries of every group (the last axis); among equal entries the later
  ones are kept."""
  m = grouped.shape[-1]
  if n in (0, m):
    return jnp.full(grouped.shape, n == m)
  if m <= _PAIRWISE_M:  # the stable ascending rank: entries below, plus equal ones before
    mine, other = grouped[..., :, None], grouped[..., None, :]
    before = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]
    rank = jnp.sum((other < mine) | ((other == mine) & before), axis=-1)
    return rank >= m - n
  # The n-th largest value of every group, found bit by bit (32 counting passes, no sort) on
  # order-preserving unsigned keys of the floats (-0.0 made 0.0, which it equals).
  bits = lax.bitcast_convert_type(jnp.where(grouped == 0, 0.0, grouped).astype(jnp.float32),
                                  jnp.uint32)
  key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))

  def bit(b, threshold):
    candidate = threshold | (jnp.uint32(1) << (31 - b).astype(jnp.uint32))
    enough = jnp.sum(key >= candidate, axis=-1, keepdims=True) >= n
    return jnp.where(enough, candidate, threshold)

  threshold = lax.fori_loop(0, 32, bit, jnp.zeros(grouped.shape[:-1] + (1,), jnp.uint32))
  above, ties = key > threshold, key == threshold
  needed = n - jnp.sum(above, axis=-1, keepdims=True)
  ties_from_here = jnp.flip(jnp.cumsum(jnp.flip(ties, -1), axis=-1), -1)
  return above | (ties & (ties_from_here <= needed))


def n_of_m_leaf(scores: jax.Array, n: int, m: int, axis: int = 0) -> jax.Array:
  """Keep-mask of one array with exactly ``n`` kept in each group of ``m`` along ``axis``.

  Example:
    >>> n_of_m_leaf(jnp.array([3.0, 1.0, 2.0, 0.0]), 1, 2).tolist()
    [True, False, True, False]
  """
  if not 0 <= n <= m or m < 1:
    raise ValueError(f"N:M needs 0 <= n <= m and m >= 1, got n={n}, m={m}.")
  gran.check_leaf(scores.shape, gran.Granularity("n_of_m", axis=axis, n=n, m=m), "scores")
  moved = jnp.moveaxis(scores, axis, -1)
  grouped = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  keep = _keep_largest(grouped, n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)


def n_of_m(scores: Any, n: int, m: int, axis: int = 0) -> Any:
  """N:M keep-masks for every leaf; fails naming the leaf whose axis ``m`` does not divide.

  Example:
    >>> n_of_m({"k": jnp.arange(8.0).reshape(8, 1)}, 1, 4)["k"].sum().tolist()
    2
  """
  g = gran.n_of_m(n, m, axis)
  tree_utils.check_finite(scores, what="scores")

  def leaf(path, s):
    gran.check_leaf(s.shape, g, path)
    return n_of_m_leaf(s, n, m, axis)
  return tree_utils.map_with_path(leaf, scores)

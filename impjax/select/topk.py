"""Exact top-k selection over a pytree of scores, without sorting or concatenating them.

The k-th smallest score is found by bisection on the order-preserving ``uint32`` keys of the
float32 scores (32 counting passes, each a per-leaf count then a sum), then ties at the
threshold are broken by position (leaf order, then flat index), so exactly ``k`` are pruned.
Masks are ``True`` where a weight is kept.

Reference: global magnitude pruning as in Frankle & Carbin 2019 ("The Lottery Ticket
Hypothesis"); local versus global scopes as compared in Blalock et al. 2020.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import select
  >>> m = select.topk({"a": jnp.array([3.0, 1.0]), "b": jnp.array([2.0, 0.5])}, 0.5)
  >>> m["a"].tolist(), m["b"].tolist()
  ([True, False], [True, False])
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import tree_utils

Scope = str | Callable[[str], str]


def sortable_keys(x: jax.Array) -> jax.Array:
  """Maps float scores to ``uint32`` keys with the same order (``-0.0`` equals ``0.0``)."""
  x = x.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def num_to_prune(sparsity: Any, total: int) -> jax.Array | int:
  """``round(sparsity * total)`` (half up) of the float32 product, the same eager and traced.

  Concrete and traced sparsities go through identical float32 arithmetic, so a jitted step
  prunes exactly as many units as an eager call (``0.265 * 100`` is 26 in both). The rounding
  never adds to the product, so no fused multiply-add can change the result.
  """
  if tree_utils.is_concrete(sparsity):
    product = np.float32(sparsity) * np.float32(total)
    whole = np.floor(product)
    return int(whole) + int(product >= whole + np.float32(0.5))
  product = jnp.asarray(sparsity, jnp.float32) * jnp.float32(total)
  whole = jnp.floor(product)
  return whole.astype(jnp.int32) + (product >= whole + 0.5).astype(jnp.int32)


def _kth_smallest_key(keys: list[jax.Array], k) -> jax.Array:
  """Smallest key ``t`` with ``count(keys <= t) >= k`` (for ``k >= 1``)."""
  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    count = sum(jnp.sum(kk <= mid, dtype=jnp.int32) for kk in keys)
    enough = count >= k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)
  lo, _ = lax.fori_loop(0, 32, body, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))
  return lo


def prune_lowest(leaves: list[jax.Array], k) -> list[jax.Array]:
  """Keep-masks pruning exactly the ``k`` lowest scores across ``leaves`` (ties by position)."""
  if not leaves:
    return []
  keys = [sortable_keys(x) for x in leaves]
  threshold = _kth_smallest_key(keys, jnp.maximum(k, 1))
  n_less = sum(jnp.sum(kk < threshold, dtype=jnp.int32) for kk in keys)
  need = k - n_less
  masks, offset = [], jnp.zeros((), jnp.int32)
  for kk in keys:
    eq = kk == threshold
    position = jnp.cumsum(eq.reshape(-1), dtype=jnp.int32).reshape(kk.shape) + offset
    prune = (kk < threshold) | (eq & (position <= need))
    masks.append(jnp.logical_not(prune) | (k <= 0))
    offset = offset + jnp.sum(eq, dtype=jnp.int32)
  return masks


def _scope_name(scope: Scope, path: str) -> str:
  if scope == "global":
    return ""
  if scope == "local":
    return path
  if callable(scope):
    return scope(path)
  raise ValueError(f"scope must be 'global', 'local' or a callable, got {scope!r}.")


def topk(scores: Any, sparsity: Any, *, scope: Scope = "global") -> Any:
  """Keep-masks that prune exactly ``round(sparsity * N)`` lowest scores in each scope.

  Args:
    scores: a pytree of float arrays (empty leaves take no part).
    sparsity: fraction to prune in [0, 1]: a scalar (may be traced), or with
      ``scope="local"`` a pytree of per-leaf fractions matching ``scores``.
    scope: ``"global"`` (one budget over all leaves), ``"local"`` (per leaf), or a callable
      mapping a leaf path to a scope name (one budget per scope).

  Returns:
    A bool pytree like ``scores``, ``True`` where kept.

  Example:
    >>> topk({"w": jnp.array([0.1, 0.4, 0.2, 0.3])}, 0.5, scope="local")["w"].tolist()
    [False, True, False, True]
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(scores)
  paths = [tree_utils.path_str(p) for p, _ in flat]
  leaves = [x for _, x in flat]
  tree_utils.check_finite(scores, what="scores")
  if isinstance(sparsity, (int, float)) or hasattr(sparsity, "shape"):
    tree_utils.check_fraction(sparsity, what="sparsity")
    per_leaf = [sparsity] * len(leaves)
    per_leaf_given = False
  else:
    if scope != "local":
      raise ValueError("A per-leaf sparsity tree needs scope='local'.")
    tree_utils.check_same_structure(scores, sparsity, names=("scores", "sparsity"), shapes=False)
    per_leaf = jax.tree.leaves(sparsity)
    for path, s in zip(paths, per_leaf):
      tree_utils.check_fraction(s, what=f"sparsity of leaf '{path}'")
    per_leaf_given = True

  scopes: dict[str, list[int]] = {}
  for i, path in enumerate(paths):
    scopes.setdefault(path if per_leaf_given else _scope_name(scope, path), []).append(i)
  masks: list[Any] = [None] * len(leaves)
  for members in scopes.values():
    total = int(sum(np.size(leaves[i]) for i in members))
    k = num_to_prune(per_leaf[members[0]], total)
    for i, m in zip(members, prune_lowest([leaves[i] for i in members], k)):
      masks[i] = m
  return jax.tree_util.tree_unflatten(treedef, masks)


def threshold(scores: Any, value: Any) -> Any:
  """Keep-masks ``score > value`` for every leaf.

  Example:
    >>> threshold({"w": jnp.array([0.1, 0.5])}, 0.2)["w"].tolist()
    [False, True]
  """
  tree_utils.check_finite(scores, what="scores")
  return jax.tree.map(lambda s: s > value, scores)

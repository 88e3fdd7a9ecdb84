"""Exact top-k selection over a pytree of scores, without sorting or concatenating them.

The k-th smallest score is found by a radix select on the order-preserving ``uint32`` keys of
the float32 scores (two histogram passes of 16-bit digits, each a per-leaf ``bincount`` then a
sum, or a ``psum`` across devices), then ties at the threshold are broken by position (leaf
order, then flat index), so exactly ``k`` are pruned. No score is sorted or gathered.
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

import functools
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


_HALF_BITS = 16
_BINS = 1 << _HALF_BITS


def _histogram(digits: list[jax.Array], length: int, axis_name: str | None) -> jax.Array:
  """Counts of each digit value over all leaves (and devices of ``axis_name``)."""
  counts = sum(jnp.bincount(d.reshape(-1), length=length) for d in digits)
  return lax.psum(counts, axis_name) if axis_name else counts


def _psum(x, axis_name):
  return lax.psum(x, axis_name) if axis_name else x


def _kth_smallest_key(keys: list[jax.Array], k, axis_name: str | None = None) -> jax.Array:
  """The ``k``-th smallest key (``k >= 1``) by a two-pass radix select on 16-bit digits.

  Pass one histograms the high halves of all keys and finds the bucket holding the k-th key;
  pass two histograms the low halves of the keys in that bucket. Each pass is a local
  ``bincount`` plus, with ``axis_name``, one ``psum`` of 65536 counts.
  """
  high = [(kk >> _HALF_BITS).astype(jnp.int32) for kk in keys]
  cum_high = jnp.cumsum(_histogram(high, _BINS, axis_name))
  bucket = jnp.searchsorted(cum_high, k, side="left")
  below = jnp.where(bucket > 0, cum_high[jnp.maximum(bucket - 1, 0)], 0)
  low = [jnp.where(h == bucket, (kk & (_BINS - 1)).astype(jnp.int32), _BINS)
         for h, kk in zip(high, keys)]
  cum_low = jnp.cumsum(_histogram(low, _BINS + 1, axis_name)[:_BINS]) + below
  digit = jnp.searchsorted(cum_low, k, side="left")
  return (bucket.astype(jnp.uint32) << _HALF_BITS) | digit.astype(jnp.uint32)


def _ties_before_this_device(count: jax.Array, axis_name: str | None):
  """(ties on earlier devices of ``axis_name``, ties on all devices) for one leaf."""
  if not axis_name:
    return jnp.zeros((), jnp.int32), count
  counts = lax.all_gather(count, axis_name)
  earlier = jnp.arange(counts.shape[0]) < lax.axis_index(axis_name)
  return jnp.sum(jnp.where(earlier, counts, 0)), jnp.sum(counts)


@functools.partial(jax.jit, static_argnames="axis_name")
def prune_lowest(leaves: list[jax.Array], k, axis_name: str | None = None) -> list[jax.Array]:
  """Keep-masks pruning exactly the ``k`` lowest scores across ``leaves`` (ties by position).

  With ``axis_name`` (inside ``shard_map``/``pmap``) each device holds one contiguous block
  of every leaf; counts are summed across devices and ties are broken in the global order
  (leaf, then device, then flat index). Jitted with ``k`` traced, so eager calls compile once
  per leaf shapes.
  """
  if not leaves:
    return []
  keys = [sortable_keys(x) for x in leaves]
  threshold = _kth_smallest_key(keys, jnp.maximum(k, 1), axis_name)
  less = [kk < threshold for kk in keys]
  equal = [kk == threshold for kk in keys]
  need = k - _psum(sum(jnp.sum(m, dtype=jnp.int32) for m in less), axis_name)
  ties = [_ties_before_this_device(jnp.sum(e, dtype=jnp.int32), axis_name) for e in equal]
  all_ties = sum(total for _, total in ties)

  def break_ties():
    out, offset = [], jnp.zeros((), jnp.int32)
    for e, (earlier, total) in zip(equal, ties):
      position = jnp.cumsum(e.reshape(-1), dtype=jnp.int32).reshape(e.shape) + offset + earlier
      out.append(e & (position <= need))
      offset = offset + total
    return out

  pruned_ties = lax.cond(all_ties > need, break_ties, lambda: equal)
  return [jnp.logical_not(l | t) | (k <= 0) for l, t in zip(less, pruned_ties)]


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

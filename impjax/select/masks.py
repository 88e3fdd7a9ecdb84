"""From importance to element masks: group, normalize, select, expand — one pure function.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, scores, select
  >>> params = {"d": {"kernel": jnp.array([[1.0, -3.0], [2.0, 0.5]])}}
  >>> plan = groups.plan(params, [("kernel", groups.neurons(-1))])
  >>> select.masks(scores.magnitude(params), plan, 0.5)["d"]["kernel"].tolist()
  [[False, True], [False, True]]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from impjax import groups
from impjax import tree_utils
from impjax.select.n_of_m import n_of_m_leaf
from impjax.select.selector import Selector
from impjax.select.topk import topk


def masks(importance: tree_utils.Importance, the_plan: tree_utils.Plan, sparsity: Any = 0.0,
          selector: Selector = Selector(), *,
          previous: Any = None) -> tree_utils.Masks:
  """Element keep-masks for ``importance`` under ``the_plan``.

  Leaves planned as ``n_of_m`` get N:M masks; the other prunable leaves are reduced to group
  scores (``selector.reduce``), normalized per leaf (``selector.normalizer``), and pruned
  together by :func:`topk` with ``sparsity`` over ``selector.scope``; a leaf cut below
  ``selector.floor`` of its groups keeps its best ``ceil(floor * groups)`` instead (so even
  ``sparsity=1`` keeps them; ``floor=0`` prunes exactly the budget). Dense leaves get a
  scalar ``True``.

  Args:
    importance: importance pytree, like the params.
    the_plan: granularity tree from :func:`impjax.groups.plan`.
    sparsity: scalar fraction of prunable units to prune (may be traced), or with
      a local scope a tree of per-leaf fractions (:meth:`Selector.budget`). N:M leaves
      ignore it.
    selector: a :class:`impjax.select.Selector` (:func:`impjax.select.selector`).
    previous: optional earlier keep-masks; units they pruned rank below every other unit, so
      they stay pruned while the sparsity does not shrink.

  Returns:
    Bool masks broadcastable to each leaf of ``importance``.
  """
  tree_utils.check_same_structure(the_plan, importance, names=("plan", "importance"),
                                  shapes=False)
  tree_utils.check_finite(importance, what="importance")
  if previous is not None:
    tree_utils.check_broadcasts(importance, previous, what="previous mask")
  grouped = jax.tree.map(
      lambda s, g: (s[:0].reshape(-1) if g.kind == "n_of_m"
                    else groups.reduce_leaf(s, g, selector.reduce)),
      importance, the_plan)
  split = lambda tree: _by_layer(tree, the_plan, importance, split=True)
  join = lambda tree: _by_layer(tree, the_plan, importance, split=False)
  grouped = join(groups.normalize(split(grouped), selector.normalizer))
  if previous is not None:
    grouped = jax.tree.map(_rank_pruned_last, grouped, the_plan, previous, importance)
  if selector.scope == "local":
    group_masks = join(topk(split(grouped), _by_layer(sparsity, the_plan, importance, split=True,
                                                      copies=True), scope="local"))
  else:
    group_masks = topk(grouped, sparsity, scope=selector.scope)
  if selector.floor > 0:
    group_masks = join(jax.tree.map(  # N:M leaves have empty group scores: no floor
        lambda m, s: m if s.size == 0 else _floored(m, s, selector.floor),
        split(group_masks), split(grouped)))

  def leaf(s, g, m):
    if g.kind == "n_of_m":
      return n_of_m_leaf(s, g.n, g.m, g.axis)
    return groups.expand_leaf(m, g, np.shape(s))
  return jax.tree.map(leaf, importance, the_plan, group_masks)


def _by_layer(tree: Any, the_plan: tree_utils.Plan, importance: Any, *, split: bool,
              copies: bool = False) -> Any:
  """Flat group vectors of stacked leaves as a tuple of per-layer rows (``split``), or the rows
  joined back; ``copies``: a per-leaf value (a local budget) repeated for every layer. A scalar
  ``tree`` (a scalar budget) passes through."""
  if isinstance(tree, (int, float)) or hasattr(tree, "shape"):
    return tree

  def leaf(g, x, s):
    if g.layer_axis is None or g.kind in ("dense", "n_of_m"):
      return x
    layers = np.shape(s)[g.layer_axis]
    if copies:
      return (x,) * layers
    return tuple(x.reshape(layers, -1)) if split else jnp.concatenate(x)
  return jax.tree.map(leaf, the_plan, tree, importance)


def _floored(mask: jax.Array, group_scores: jax.Array, floor: float) -> jax.Array:
  """``mask``, or the leaf's own ``ceil(floor * n)`` best groups where it keeps fewer (a
  ``lax.cond``: the local selection runs only for a leaf under its floor)."""
  n = group_scores.size
  least = min(n, max(1, math.ceil(floor * n)))
  own = lambda: topk({"x": group_scores}, (n - least) / n, scope="local")["x"]
  return jax.lax.cond(jnp.sum(mask) >= least, lambda: mask, own)


def _rank_pruned_last(group_scores, g, previous_mask, leaf):
  """Gives units that ``previous_mask`` pruned the lowest finite score."""
  if group_scores.size == 0:
    return group_scores
  full = jnp.broadcast_to(previous_mask, np.shape(leaf)).astype(jnp.float32)
  alive = groups.reduce_leaf(full, g, "max") > 0
  return jnp.where(alive, group_scores, -jnp.finfo(jnp.float32).max)

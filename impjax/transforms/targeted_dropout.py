"""Targeted dropout: during training, drop at random only the least important weights or units.

Among the bottom ``gamma`` fraction of candidates — each output unit's incoming weights (weight
variant, leaves planned ``element``) or a layer's units (unit variant, leaves planned
``neurons``), ranked by any importance pytree — each is dropped with probability ``alpha``.
Nothing is rescaled, and evaluation uses the weights unchanged (call the unwrapped loss or
model). A network trained this way stops relying on what magnitude pruning later removes.

With a :class:`impjax.structure.Structure` of any model (``structure=``), the units are its
discovered MLP units and attention heads, each scored over all its coupled entries and ranked
within its own layer; a dropped unit loses every coupled entry (its kernel columns and rows,
bias entries, a head's q/k/v/out slices), and the residual stream, norms, stem and classifier
are never touched.

Reference: Gomez et al. 2019, "Learning Sparse Networks Using Targeted Dropout" (for-ai/TD:
per-output-column thresholds ``tau_j = sort(|W[:, j]|)[floor(gamma * fan_in)]``, targeted
``|W| < tau_j``, no ``1/(1 - alpha)`` rescale; the unit variant ranks units by column L2 norm).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import transforms
  >>> loss = lambda p, x: jnp.sum(x @ p["dense"]["kernel"])
  >>> train_loss = transforms.targeted_dropout(loss, gamma=0.5, alpha=1.0)
  >>> params = {"dense": {"kernel": jnp.array([[1.0, -4.0], [3.0, 2.0]])}}
  >>> float(train_loss(params, jax.random.key(0), jnp.ones((1, 2))))  # 1 and 2 dropped
  -1.0
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import groups
from impjax import scores
from impjax import select
from impjax import tree_utils
from impjax.transforms import masking


def _below_quantile(score: jax.Array, gamma: Any) -> jax.Array:
  """``score < sort(score, axis=0)[floor(gamma * n)]`` along axis 0 (all, when that is ``n``).

  for-ai/TD's threshold: column ``j`` of a ``(fan_in, out)`` array gets its own ``tau_j``;
  ties at ``tau_j`` are not targeted. ``tau_j`` is found without sorting, by bisection on the
  order-preserving keys of :func:`impjax.select.sortable_keys` (32 counting passes, all
  columns at once): the smallest key with more than ``floor(gamma * n)`` keys at or below it.
  """
  n = score.shape[0]
  k = jnp.floor(jnp.asarray(gamma, jnp.float32) * jnp.float32(n)).astype(jnp.int32)
  keys = select.sortable_keys(score)

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(keys <= mid, axis=0, dtype=jnp.int32) > k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  shape = score.shape[1:]
  tau, _ = lax.fori_loop(0, 32, body, (jnp.zeros(shape, jnp.uint32),
                                       jnp.full(shape, 0xFFFFFFFF, jnp.uint32)))
  return (keys < tau) | (k >= n)


def _targeted_leaf(path: str, score: jax.Array, g: groups.Granularity, gamma: Any) -> jax.Array:
  if g.kind == "dense":
    return jnp.zeros((), jnp.bool_)
  if g.kind == "element":
    if np.ndim(score) < 2:
      raise ValueError(f"Weight-level targeted dropout needs a kernel with an output axis, but "
                       f"leaf '{path}' has shape {np.shape(score)}.")
    return _below_quantile(score.reshape(-1, score.shape[-1]), gamma).reshape(score.shape)
  if g.kind == "neurons":
    unit = groups.reduce_leaf(score, g, "l2")
    return groups.expand_leaf(_below_quantile(unit, gamma), g, np.shape(score))
  raise ValueError(f"Targeted dropout works on 'element' (weights) or 'neurons' (units) leaves, "
                   f"but leaf '{path}' is planned as '{g.kind}'.")


def targeted(importance: tree_utils.Importance, the_plan: tree_utils.Plan, gamma: Any) -> Any:
  """Which weights or units are targeted: the bottom ``gamma`` fraction by importance.

  ``element`` leaves: in each output column (last axis), the scores below the column's
  ``floor(gamma * fan_in)``-th smallest (the ``floor(gamma * fan_in)`` lowest when there are
  no ties); ``neurons`` leaves: likewise the units by the L2 norm of their scores.

  Args:
    importance: importance pytree like the params (e.g. ``scores.magnitude(params)``).
    the_plan: granularity tree from :func:`impjax.groups.plan`.
    gamma: targeted fraction in [0, 1] (may be traced).

  Returns:
    Bool tree, ``True`` where targeted; broadcastable to each leaf (dense leaves: ``False``).

  Example:
    >>> p = {"k": jnp.array([[1.0, 4.0], [3.0, 2.0], [5.0, 0.5]])}
    >>> plan = groups.plan(p, [("k", groups.element())])
    >>> targeted(p, plan, 0.5)["k"].tolist()
    [[True, False], [False, False], [False, True]]
  """
  tree_utils.check_fraction(gamma, what="gamma")
  tree_utils.check_same_structure(the_plan, importance, names=("plan", "importance"),
                                  shapes=False)
  tree_utils.check_finite(importance, what="importance")
  return tree_utils.map_with_path(lambda path, s, g: _targeted_leaf(path, s, g, gamma),
                                  importance, the_plan)


def targeted_masks(key: jax.Array, importance: tree_utils.Importance, the_plan: tree_utils.Plan,
                   gamma: Any,
                   alpha: Any) -> Any:
  """Keep-masks of one training step: each targeted weight or unit dropped with probability
  ``alpha`` (one draw per weight for ``element`` leaves, per unit for ``neurons`` leaves).

  The masks are a pure function of ``key``: the same key gives the same masks.

  Example:
    >>> p = {"k": jnp.array([[1.0, 4.0], [3.0, 2.0]])}
    >>> plan = groups.plan(p, [("k", groups.element())])
    >>> targeted_masks(jax.random.key(0), p, plan, 0.5, 1.0)["k"].tolist()
    [[False, True], [True, False]]
  """
  tree_utils.check_fraction(alpha, what="alpha")
  targets = targeted(importance, the_plan, gamma)
  leaves, treedef = jax.tree.flatten(targets)
  keys = jax.random.split(key, max(len(leaves), 1))
  plans = jax.tree.leaves(the_plan)

  def leaf(k, target, g, score):
    if g.kind == "dense":
      return jnp.ones((), jnp.bool_)
    if g.kind == "neurons":
      units = jax.random.bernoulli(k, alpha, (np.shape(score)[g.axis],))
      drop = groups.expand_leaf(units, g, np.shape(score))
    else:
      drop = jax.random.bernoulli(k, alpha, np.shape(score))
    return jnp.logical_not(target & drop)

  return jax.tree.unflatten(treedef, [leaf(k, t, g, s) for k, t, g, s in
                                      zip(keys, leaves, plans, jax.tree.leaves(importance))])


def targeted_unit_masks(key: jax.Array, s: Any, importance: tree_utils.Importance,
                        params: tree_utils.Params, gamma: Any, alpha: Any) -> tree_utils.Masks:
  """Element keep-masks of one step over the discovered units of ``s`` (a
  :class:`impjax.structure.Structure`): in every layer of every MLP-unit and head group, the
  units whose L2 importance over their coupled entries is below the layer's
  ``floor(gamma * units)``-th smallest are targeted, each dropped with probability ``alpha``.

  Example:
    >>> from impjax import structure
    >>> params = {"w1": jnp.array([[1.0, 3.0, 2.0, 0.5]]), "w2": jnp.ones((4, 1))}
    >>> s = structure.discover(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params,
    ...                        jnp.ones((1, 1)))
    >>> m = targeted_unit_masks(jax.random.key(0), s, params, params, 0.5, 1.0)
    >>> m["w1"].tolist(), m["w2"][:, 0].tolist()
    ([[False, True, True, False]], [False, True, True, False])
  """
  from impjax.structure import selection  # pylint: disable=g-import-not-at-top
  tree_utils.check_fraction(gamma, what="gamma")
  tree_utils.check_fraction(alpha, what="alpha")
  unit_scores = selection.group_scores(s, importance, how="l2")
  keys = jax.random.split(key, max(len(unit_scores), 1))
  keep = {}
  for k, (name, score) in zip(keys, sorted(unit_scores.items())):
    rows = score.reshape(-1, score.shape[-1])  # (layers, units)
    targeted = _below_quantile(rows.T, gamma).T
    drop = jax.random.bernoulli(k, alpha, rows.shape)
    keep[name] = jnp.logical_not(targeted & drop).reshape(score.shape)
  return groups.coupled_masks(params, {n: s.groups[n].coupled for n in keep}, keep)


def targeted_dropout(loss_fn: Callable[..., Any], *, gamma: float = 0.5, alpha: float = 0.5,
                     rules: groups.Rules | None = None,
                     structure: Any = None) -> Callable[..., Any]:
  """Wraps ``loss_fn(params, *args, **kwargs)`` to train with targeted dropout.

  The wrapped function is ``(params, key, *args, importance=None, **kwargs)``: it draws
  :func:`targeted_masks` from ``key`` and calls ``loss_fn`` on the masked params. Importance
  defaults to ``|w|`` of the current params (the paper's choice); pass any impjax importance
  tree (e.g. an EMA of ``scores.taylor``) as ``importance``. Dropped weights get no gradient
  this step. At evaluation call ``loss_fn`` itself: targeted dropout is off.

  Args:
    loss_fn: the loss (or any function) of the params.
    gamma: targeted fraction (for-ai/TD default 0.5).
    alpha: drop probability of a targeted weight or unit (default 0.5).
    rules: path rules; ``element`` leaves get the weight variant, ``neurons`` leaves the unit
      variant. Default: every ``kernel`` elementwise, biases and norms untouched.
    structure: a :class:`impjax.structure.Structure` of the model: the unit variant over its
      discovered MLP units and heads (:func:`targeted_unit_masks`) instead of ``rules``.

  Returns:
    The wrapped loss.
  """
  tree_utils.check_fraction(gamma, what="gamma")
  tree_utils.check_fraction(alpha, what="alpha")
  if structure is not None and rules is not None:
    raise ValueError("targeted_dropout takes rules or a structure, not both: the structure's "
                     "groups say which units are targeted.")

  def wrapped(params, key, *args, importance=None, **kwargs):
    if importance is None:
      importance = scores.magnitude(jax.lax.stop_gradient(params))
    if structure is None:
      masks = targeted_masks(key, importance, groups.plan(params, rules), gamma, alpha)
    else:
      masks = targeted_unit_masks(key, structure, importance, params, gamma, alpha)
    return loss_fn(masking.apply_masks(params, masks), *args, **kwargs)

  return wrapped

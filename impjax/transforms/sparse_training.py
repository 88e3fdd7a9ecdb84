"""Dynamic sparse training: RigL, SET and static sparsity as one optax transform.

The network is sparse from the first step. :func:`sparse_training` draws random masks with the
exact per-leaf kept counts of a density distribution (:func:`impjax.select.layer_counts`:
uniform, or ERK, Erdős–Rényi-Kernel; a stacked leaf planned per layer keeps its count in every
layer), masks the gradients, keeps the pruned weights exactly zero, and every ``update_every``
steps until ``end_step`` rewires each leaf (each layer of a stacked one) without changing its
count: it drops the ``k = floor(f_t * n_active)`` active weights of smallest magnitude (after
the step's update) and grows ``k`` inactive ones, by largest gradient magnitude (``"rigl"``,
the step's dense gradient, which JAX computes for every weight anyway) or at random
(``"set"``); ``"static"`` never rewires. ``f_t = drop_fraction / 2 * (1 + cos(pi t / end_step))``
(RigL's cosine decay). Grown weights start at zero. The state is a
:class:`impjax.transforms.PruneState`, so :func:`impjax.transforms.current_masks` and
:func:`impjax.transforms.sparsity_report` read it, and a step with non-finite gradients applies
nothing.

References: Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners" (RigL, ERK);
Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
connectivity inspired by network science" (SET).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from impjax import transforms
  >>> params = {"d": {"kernel": jnp.ones((4, 4))}}
  >>> tx = transforms.sparse_training(optax.sgd(0.1), 0.75, method="rigl", update_every=1,
  ...                                 end_step=10, distribution="uniform")
  >>> state = tx.init(params)
  >>> grads = {"d": {"kernel": jnp.ones((4, 4))}}
  >>> updates, state = tx.update(grads, state, params)
  >>> params = optax.apply_updates(params, updates)  # the pruned 75% are now exactly zero
  >>> int((params["d"]["kernel"] != 0).sum()), int(state.masks["d"]["kernel"].sum())
  (4, 4)
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from impjax import groups
from impjax import select
from impjax import tree_utils
from impjax.transforms import masking

METHODS = ("static", "set", "rigl")


def drop_fraction_at(step: Any, drop_fraction: float, end_step: int) -> jax.Array:
  """RigL's cosine-decayed drop fraction ``drop_fraction / 2 * (1 + cos(pi * step / end_step))``.

  Example:
    >>> float(drop_fraction_at(0, 0.3, 100)), float(drop_fraction_at(100, 0.3, 100))
    (0.30000001192092896, 0.0)
  """
  t = jnp.asarray(step, jnp.float32)
  return drop_fraction / 2 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, end_step) / end_step))


def _ranks(score: jax.Array) -> jax.Array:
  """Rank of every entry of a leaf by descending score (:func:`impjax.select.descending_ranks`
  of the flattened leaf)."""
  return select.descending_ranks(score.reshape(-1)).reshape(score.shape)


def rewire(mask: jax.Array, weights: jax.Array, grow_score: jax.Array,
           fraction: Any) -> jax.Array:
  """One drop-and-grow of a leaf: the ``k = floor(fraction * n_active)`` active entries of
  least ``|weights|`` leave, the ``k`` best ``grow_score`` entries among the rest join; the
  count is unchanged.

  Example:
    >>> m = jnp.array([True, True, False, False])
    >>> rewire(m, jnp.array([0.1, 2.0, 0.0, 0.0]), jnp.array([0.0, 0.0, 5.0, 1.0]), 0.5).tolist()
    [False, True, True, False]
  """
  n_active = jnp.sum(mask)
  k = jnp.floor(fraction * n_active).astype(jnp.int32)
  magnitude = jnp.where(mask, jnp.abs(weights).astype(jnp.float32), jnp.inf)
  dropped = mask & (_ranks(-magnitude) < k)
  remaining = mask & ~dropped
  grow = jnp.where(remaining, -jnp.inf, grow_score.astype(jnp.float32))
  grown = ~remaining & (_ranks(grow) < k)
  return remaining | grown


def _per_layer(n: int, layers: int) -> np.ndarray:
  """``n`` kept entries split over ``layers`` layers as evenly as whole counts allow (the
  first layers take the remainder)."""
  return n // layers + (np.arange(layers) < n % layers)


def _initial_masks(params, the_plan, counts, key):
  """Random masks keeping exactly ``counts`` entries of every planned leaf (and, for a leaf
  planned per layer, of every layer: the count split evenly)."""
  def leaf(i, p, g, n):
    if g.kind == "dense":
      return jnp.ones((), jnp.bool_)
    draws = jax.random.uniform(jax.random.fold_in(key, i), np.shape(p))
    if g.layer_axis is None:
      return _ranks(draws) < n
    axis = g.layer_axis % np.ndim(p)
    per_layer = _per_layer(n, np.shape(p)[axis]).reshape((-1,) + (1,) * (np.ndim(p) - 1))
    keep = jax.vmap(_ranks)(jnp.moveaxis(draws, axis, 0)) < per_layer
    return jnp.moveaxis(keep, 0, axis)
  flat, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(treedef, [
      leaf(i, p, g, n) for i, (p, g, n) in enumerate(zip(flat, jax.tree.leaves(the_plan),
                                                        jax.tree.leaves(counts)))])


def sparse_training(inner: optax.GradientTransformation, sparsity: float, *,
                    method: str = "rigl", distribution: str = "erk", update_every: int = 100,
                    end_step: int | None = None, drop_fraction: float = 0.3,
                    rules: groups.Rules | None = None,
                    seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` to train at ``sparsity`` from the start, rewiring as RigL or SET do.

  Args:
    inner: the optimizer to wrap.
    sparsity: the fraction of the planned weights pruned, in [0, 1).
    method: ``"rigl"`` (grow by gradient magnitude), ``"set"`` (grow at random) or
      ``"static"`` (the initial random masks throughout).
    distribution: per-leaf densities, ``"erk"`` or ``"uniform"`` (exact counts per leaf, and
      per layer of a leaf planned with :func:`impjax.groups.per_layer`, as
      :func:`impjax.structure.rules` plans a scanned stack's kernels).
    update_every: steps between rewirings (RigL's ``delta T``).
    end_step: the last step that rewires (RigL: 75% of training); required unless static.
    drop_fraction: the fraction of each leaf's active weights rewired at step 0, decayed to 0 at
      ``end_step`` by a cosine.
    rules: path rules planning the pruned leaves at element granularity (``None``: kernels).
    seed: seeds the initial masks and SET's growth.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``.
  """
  if method not in METHODS:
    raise ValueError(f"sparse_training method must be one of {METHODS}, got {method!r}.")
  if not isinstance(update_every, int) or update_every < 1:
    raise ValueError(f"update_every must be a positive int, got {update_every!r}.")
  if method != "static" and (not isinstance(end_step, int) or end_step < 1):
    raise ValueError(f"method {method!r} rewires until end_step: give a positive int "
                     f"end_step, got {end_step!r}.")
  if not 0.0 <= drop_fraction <= 1.0:
    raise ValueError(f"drop_fraction must lie in [0, 1], got {drop_fraction}.")
  tree_utils.check_fraction(sparsity, what="sparsity")
  if sparsity >= 1.0:
    raise ValueError("sparse_training needs some weights: sparsity must be below 1.")
  inner = optax.with_extra_args_support(inner)
  end = end_step or 1

  def plan_of(params):
    the_plan = groups.plan(params, rules)
    for path, g in tree_utils.leaves_by_path(the_plan).items():
      if g.kind not in ("dense", "element"):
        raise ValueError(f"sparse_training rewires single weights, but leaf '{path}' is "
                         f"planned as {g.kind}.")
    return the_plan

  def init(params):
    the_plan = plan_of(params)
    counts = select.layer_counts(params, the_plan, sparsity, distribution)
    key = jax.random.key(seed)
    return masking.PruneState.start(_initial_masks(params, the_plan, counts, key),
                                    inner.init(params),
                                    jax.random.key_data(jax.random.fold_in(key, 1)))

  def update(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("sparse_training needs params: call update(grads, state, params).")
    tree_utils.check_same_structure(params, updates, names=("params", "gradients"))
    tree_utils.check_same_structure(params, state.masks, names=("params", "the state's masks"),
                                    shapes=False)
    the_plan = plan_of(params)
    finite = tree_utils.all_finite(updates)
    masks = state.masks
    masked = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
    inner_updates, inner_state = inner.update(masked, state.inner_state, params, **extra_args)
    stepped = jax.tree.map(lambda p, u, m: jnp.where(m, p + u, jnp.zeros_like(p)), params,
                           inner_updates, masks)
    rewires = ((state.count % update_every == 0) & (state.count > 0) & (state.count < end)
               & finite & (method != "static"))
    key = jax.random.fold_in(jax.random.wrap_key_data(state.estimator_state), state.count)

    def rewired():
      fraction = drop_fraction_at(state.count, drop_fraction, end)
      flat, treedef = jax.tree.flatten(masks)
      out = []
      for i, (m, w, g, plan) in enumerate(zip(flat, jax.tree.leaves(stepped),
                                              jax.tree.leaves(updates),
                                              jax.tree.leaves(the_plan))):
        if plan.kind == "dense":
          out.append(m)
          continue
        score = (jnp.abs(g) if method == "rigl"
                 else jax.random.uniform(jax.random.fold_in(key, i), np.shape(w)))
        if plan.layer_axis is None:
          out.append(rewire(m, w, score, fraction))
        else:  # each layer of a stacked leaf rewired on its own, its count unchanged
          axis = plan.layer_axis % np.ndim(w)
          out.append(jax.vmap(rewire, in_axes=(axis, axis, axis, None), out_axes=axis)(
              m, w, score, fraction))
      return jax.tree.unflatten(treedef, out)

    new_masks = lax.cond(rewires, rewired, lambda: masks)
    # Weights active before and after take the inner update; dropped ones become zero, and
    # grown ones stay zero (they were inactive, so zero, before this step).
    new_updates = jax.tree.map(
        lambda u, p, old, new: jnp.where(finite, jnp.where(old & new, u, -p), 0).astype(u.dtype),
        inner_updates, params, masks, new_masks)
    return new_updates, masking.next_state(state, finite, new_masks, inner_state,
                                           state.estimator_state)

  return optax.GradientTransformationExtraArgs(init, update)


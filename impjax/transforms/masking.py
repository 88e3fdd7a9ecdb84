"""Masking: apply keep-masks, and an optax wrapper that prunes on a schedule during training.

:func:`prune` wraps any optax optimizer. Its state holds the masks, the inner state and the
criterion's estimator state; every step it accumulates the criterion's statistic, on the
schedule's update steps re-scores and re-selects the masks, masks the gradients fed to the
inner optimizer, and returns updates that set pruned weights to exactly zero (``-w``), so
they stay zero through Adam moments, momentum and decoupled weight decay. A step whose
gradients are not all finite applies no update at all — zero updates, and the inner state,
estimate, masks and step count as they were — and is counted in the state, so a skipped
re-selection happens on the next finite step (eagerly, non-finite gradients raise instead,
naming the leaf).

Reference: Zhu & Gupta 2017, "To prune, or not to prune"; jaxpruner (Lee et al. 2023)
for sparsity kept in optax state.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from impjax import schedules, transforms
  >>> params = {"dense": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2), "bias": jnp.ones(2)}}
  >>> tx = transforms.prune(optax.adam(1e-3), schedules.one_shot(0.5), "magnitude")
  >>> state = tx.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = tx.update(grads, state, params)
  >>> new = optax.apply_updates(params, updates)
  >>> int((new["dense"]["kernel"] == 0).sum()), int((new["dense"]["bias"] == 0).sum())
  (4, 0)
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from impjax import estimators
from impjax import groups
from impjax import schedules
from impjax import scores
from impjax import select
from impjax import tree_utils
from impjax.schedules import Schedule


class PruneState(NamedTuple):
  """State of :func:`prune`.

  Attributes:
    count: steps applied (int32); a step with non-finite gradients is not one of them.
    masks: bool keep-masks like the params (scalar ``True`` for dense leaves).
    inner_state: the wrapped optimizer's state.
    estimator_state: the criterion's estimator state (``()`` for data-free criteria).
    skipped_nonfinite: steps whose gradients were non-finite and so applied no update at all:
      params, inner state, estimate, masks and ``count`` stay as they were (int32).
    nonfinite_streak: how many of the latest steps in a row were skipped (int32; 0 after a
      finite step), for a train loop that stops a run whose gradients stay non-finite.
  """
  count: jax.Array
  masks: tree_utils.Masks
  inner_state: Any
  estimator_state: Any
  skipped_nonfinite: jax.Array
  nonfinite_streak: jax.Array

  @classmethod
  def start(cls, masks: tree_utils.Masks, inner_state: Any,
            estimator_state: Any = ()) -> "PruneState":
    """The state before the first step: no step counted or skipped (three separate buffers,
    so that a train step may donate the state)."""
    zero = lambda: jnp.zeros((), jnp.int32)
    return cls(count=zero(), masks=masks, inner_state=inner_state,
               estimator_state=estimator_state, skipped_nonfinite=zero(),
               nonfinite_streak=zero())


def apply_masks(params: tree_utils.Params, masks: tree_utils.Masks) -> tree_utils.Params:
  """Zeroes pruned weights: ``where(mask, w, 0)`` leaf by leaf (masks broadcast).

  Example:
    >>> apply_masks({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
    [1.0, 0.0]
  """
  tree_utils.check_broadcasts(params, masks)
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def straight_through(params: tree_utils.Params, masks: tree_utils.Masks) -> tree_utils.Params:
  """The masked weights in the forward pass, the identity in the backward pass (STE):
  ``w + stop_gradient(where(mask, w, 0) - w)``, so every weight, pruned or not, receives the
  gradient taken at the masked weights.

  Reference: Bengio et al. 2013 (straight-through estimator); Zhou et al. 2021, "Learning N:M
  Fine-grained Structured Sparse Neural Networks From Scratch" (SR-STE).

  Example:
    >>> import jax
    >>> p, m = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])}
    >>> straight_through(p, m)["w"].tolist()
    [1.0, 0.0]
    >>> jax.grad(lambda p: jnp.sum(straight_through(p, m)["w"] * 3.0))(p)["w"].tolist()
    [3.0, 3.0]
  """
  tree_utils.check_broadcasts(params, masks)
  return jax.tree.map(
      lambda p, m: p + lax.stop_gradient(jnp.where(m, p, jnp.zeros_like(p)) - p), params, masks)


def initial_masks(params: tree_utils.Params, the_plan: tree_utils.Plan) -> tree_utils.Masks:
  """All-kept masks: full-shape ``True`` for prunable leaves, scalar ``True`` for dense."""
  return jax.tree.map(
      lambda p, g: jnp.ones(() if g.kind == "dense" else np.shape(p), jnp.bool_),
      params, the_plan)


def pack_masks(masks: tree_utils.Masks) -> tree_utils.Masks:
  """Packs every non-scalar bool mask into ``uint8`` bits (``jnp.packbits``): 1/8 byte per
  weight. Scalar (dense-leaf) masks stay as they are.

  Example:
    >>> pack_masks({"w": jnp.array([True, False, True])})["w"].tolist()
    [160]
  """
  return jax.tree.map(lambda m: jnp.packbits(m.reshape(-1)) if np.ndim(m) else m, masks)


def unpack_masks(masks: tree_utils.Masks, params: tree_utils.Params) -> tree_utils.Masks:
  """Inverse of :func:`pack_masks` (bool masks pass through unchanged).

  Example:
    >>> unpack_masks({"w": jnp.array([160], jnp.uint8)}, {"w": jnp.zeros(3)})["w"].tolist()
    [True, False, True]
  """
  def leaf(m, p):
    if m.dtype != jnp.uint8:
      return m
    return jnp.unpackbits(m, count=int(np.size(p))).reshape(np.shape(p)).astype(jnp.bool_)
  return jax.tree.map(leaf, masks, params)


def sparsity_report(masks: tree_utils.Masks, params: tree_utils.Params,
                    the_plan: tree_utils.Plan | None = None) -> dict[str, float]:
  """Fraction of weights pruned per prunable leaf, plus ``"global"`` over prunable leaves;
  with ``the_plan``, a line ``"path[i]"`` per layer of each stacked leaf too (a granularity
  with a ``layer_axis``, as :func:`impjax.structure.rules` plans scanned kernels).

  Example:
    >>> sparsity_report({"w": jnp.array([True, False])}, {"w": jnp.ones(2)})
    {'w': 0.5, 'global': 0.5}
    >>> from impjax import groups
    >>> m = {"w": jnp.array([[True, True], [False, True]])}  # (layers, units)
    >>> sparsity_report(m, {"w": jnp.ones((2, 2))}, {"w": groups.per_layer(groups.element())})
    {'w': 0.25, 'w[0]': 0.0, 'w[1]': 0.5, 'global': 0.25}
  """
  plans = jax.tree.leaves(the_plan) if the_plan is not None else [None] * len(
      jax.tree.leaves(params))
  report, pruned, total = {}, 0, 0
  for path, m, p, g in zip(tree_utils.path_names(params), jax.tree.leaves(masks),
                           jax.tree.leaves(params), plans):
    if np.ndim(m) == 0 and np.ndim(p) > 0:
      continue
    kept = np.broadcast_to(np.asarray(m), np.shape(p))
    n_pruned = int(np.size(p) - np.sum(kept))
    report[path] = n_pruned / np.size(p)
    if g is not None and g.layer_axis is not None:
      for i, layer in enumerate(np.moveaxis(kept, g.layer_axis, 0)):
        report[f"{path}[{i}]"] = 1.0 - float(np.mean(layer))
    pruned, total = pruned + n_pruned, total + np.size(p)
  report["global"] = pruned / total if total else 0.0
  return report


def next_state(state: PruneState, finite: jax.Array, masks: Any, inner_state: Any,
               estimator_state: Any) -> PruneState:
  """The :class:`PruneState` after a step: a finite step counts and keeps the new inner state;
  a non-finite one keeps the inner state as it was, is counted as skipped and extends the
  streak (the masks and estimator state given are already guarded by the caller)."""
  inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state,
                             state.inner_state)
  skipped = jnp.logical_not(finite).astype(jnp.int32)
  return PruneState(count=state.count + 1 - skipped, masks=masks, inner_state=inner_state,
                    estimator_state=estimator_state,
                    skipped_nonfinite=state.skipped_nonfinite + skipped,
                    nonfinite_streak=(state.nonfinite_streak + 1) * skipped)


def find_prune_state(opt_state: Any) -> PruneState:
  """Finds the :class:`PruneState` inside a (chained, wrapped) optimizer state.

  Its ``masks`` are bit-packed when the transform was built with ``pack_masks=True``; use
  :func:`current_masks` to get bool masks either way.
  """
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState))
           if isinstance(x, PruneState)]
  if len(found) != 1:
    raise ValueError(f"Expected one PruneState in the optimizer state, found {len(found)}.")
  return found[0]


def current_masks(opt_state: Any, params: tree_utils.Params) -> tree_utils.Masks:
  """Bool keep-masks of the :class:`PruneState` inside ``opt_state`` (unpacked if packed)."""
  return unpack_masks(find_prune_state(opt_state).masks, params)


def _given_masks(masks: tree_utils.Masks, params: tree_utils.Params,
                 the_plan: tree_utils.Plan) -> tree_utils.Masks:
  """``masks`` in the state's form: full-shape bool for prunable leaves, scalar ``True`` for
  dense ones (which must keep everything)."""
  tree_utils.check_broadcasts(params, masks)  # the same structure, and shapes that fit

  def leaf(path, p, m, g):
    m = jnp.asarray(m, jnp.bool_)
    if g.kind != "dense":
      return jnp.broadcast_to(m, np.shape(p))
    if tree_utils.is_concrete(m) and not bool(np.all(np.asarray(m))):
      raise ValueError(f"The masks given to prune prune leaf '{path}', which the rules plan "
                       "dense; plan it prunable (or use transforms.hold_masks, whose rules come "
                       "from the masks).")
    return jnp.ones((), jnp.bool_)
  return tree_utils.map_with_path(leaf, params, masks, the_plan)


def hold_masks(inner: optax.GradientTransformation, masks: tree_utils.Masks, *,
               pack: bool = False) -> optax.GradientTransformationExtraArgs:
  """Fine-tunes with ``masks`` held: :func:`prune` starting from ``masks`` on
  :func:`impjax.schedules.hold`, every leaf the masks prune planned elementwise. Pruned weights
  are zero after the first step and stay zero (gradients masked, updates pinned, non-finite
  steps skipped), so one-shot pruning is followed by recovery in the user's own train loop.

  Example:
    >>> import optax
    >>> params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.ones(1)}
    >>> tx = hold_masks(optax.sgd(0.1), {"w": jnp.array([True, False, True]), "b": True})
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    >>> [round(v, 4) for v in optax.apply_updates(params, updates)["w"].tolist()]
    [0.9, 0.0, 2.9]
  """
  rules = [("^" + re.escape(path) + "$", groups.element())
           for path, m in zip(tree_utils.path_names(masks), jax.tree.leaves(masks))
           if not bool(np.all(np.asarray(m)))]
  return prune(inner, schedules.hold(), "magnitude", rules=rules, pack=pack, masks=masks)


def _check_state_fits(state: Any, params: tree_utils.Params, packed: bool) -> None:
  """Raises ``ValueError`` naming the leaf when ``state`` was built for other params."""
  if not isinstance(state, PruneState):
    raise ValueError(f"impjax.transforms.prune got a {type(state).__name__} as its state; "
                     "pass the state its own init(params) returned.")
  tree_utils.check_same_structure(params, state.masks, names=("params", "the state's masks"),
                                  shapes=False)
  for path, p, m in zip(tree_utils.path_names(params), jax.tree.leaves(params),
                        jax.tree.leaves(state.masks)):
    want = ((-(-int(np.size(p)) // 8),) if packed else np.shape(p)) if np.ndim(m) else ()
    if np.shape(m) != want:
      raise ValueError(f"The optimizer state was built for other params: its mask of leaf "
                       f"'{path}' has shape {np.shape(m)}, the leaf has shape {np.shape(p)}.")


def prune(inner: optax.GradientTransformation, schedule: Schedule,
          criterion: str | scores.Criterion = "magnitude", *,
          rules: groups.Rules | None = None,
          selector: select.Selector = select.Selector(),
          estimator: Callable[[estimators.Statistic], estimators.Estimator] | None = None,
          allow_regrowth: bool = False, axis_name: str | None = None,
          pack: bool = False, straight_through: bool = False,
          sr_ste_decay: float = 0.0,
          masks: tree_utils.Masks | None = None) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so training keeps a schedule-driven, importance-selected sparsity.

  Args:
    inner: the optimizer to wrap.
    schedule: a :class:`impjax.schedules.Schedule`.
    criterion: a registered criterion name (:func:`impjax.scores.criterion`) or a
      ``Criterion``.
    rules: path rules (``None``: prune kernels elementwise, keep the rest dense).
    selector: how importance becomes masks: scope, group reduction, normalizer, per-leaf
      allocation (:func:`impjax.select.selector`).
    estimator: factory ``statistic -> Estimator`` replacing the criterion's own.
    allow_regrowth: let pruned units return when their importance rises.
    axis_name: mapped axis over which the statistic is averaged (``pmap``/``shard_map``).
    pack: keep the masks bit-packed in the state (1/8 byte per weight instead of 1).
    straight_through: straight-through pruning (STE): the weights stay dense and receive the
      whole gradient, the masks are re-selected from them on the schedule (pruned weights may
      return; masks selected in a step's update serve the next steps' forward passes), and the
      loss reads the masked weights through :func:`straight_through`.
    sr_ste_decay: SR-STE's ``lambda`` (Zhou et al. 2021): ``lambda * w`` is added to the
      gradient of every pruned weight, pulling it towards zero (needs ``straight_through``).
    masks: bool keep-masks the state starts from (broadcastable to each leaf; default all
      kept), e.g. one-shot Wanda or SparseGPT masks; ``ValueError`` naming the leaf when they
      prune a leaf the rules plan dense. With :func:`impjax.schedules.hold` they are kept
      (:func:`hold_masks`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
  """
  crit = scores.criterion(criterion) if isinstance(criterion, str) else criterion
  inner = optax.with_extra_args_support(inner)
  selector = select.selector(*selector)
  if sr_ste_decay and not straight_through:
    raise ValueError("prune sr_ste_decay applies to straight-through pruning: set "
                     "straight_through=True.")
  if sr_ste_decay < 0:
    raise ValueError(f"prune sr_ste_decay must be >= 0, got {sr_ste_decay}.")
  est = None
  if crit.statistic is not None:
    est = (estimator or crit.estimator)(crit.statistic)
  store = pack_masks if pack else (lambda m: m)

  def init(params):
    the_plan = groups.plan(params, rules)
    start = (initial_masks(params, the_plan) if masks is None
             else _given_masks(masks, params, the_plan))
    return PruneState.start(store(start), inner.init(params),
                            () if est is None else est.init(params))

  def update(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("impjax.transforms.prune needs params: call update(grads, state, params).")
    tree_utils.check_same_structure(params, updates, names=("params", "gradients"))
    tree_utils.check_finite(updates, what="gradients")
    _check_state_fits(state, params, pack)
    the_plan = groups.plan(params, rules)
    finite = tree_utils.all_finite(updates)
    previous_masks = unpack_masks(state.masks, params)

    if est is None:
      estimate, estimator_state = None, state.estimator_state
    else:
      estimate, new_estimator_state = est.update(state.estimator_state, params, updates,
                                                 axis_name=axis_name)
      estimator_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     new_estimator_state, state.estimator_state)

    def reselect():
      # Reading the estimate here keeps its computation off the steps that do not re-select.
      value = est.read(estimator_state) if est is not None and est.read else estimate
      importance = crit.importance(params, value)
      budget = selector.budget(params, the_plan, schedule.sparsity(state.count),
                               schedule.final)
      new = select.masks(importance, the_plan, budget, selector,
                         previous=None if allow_regrowth or straight_through else previous_masks)
      usable = tree_utils.all_finite(importance)
      return jax.tree.map(lambda n, o: jnp.where(usable, n, o), new, previous_masks)

    masks = lax.cond(schedule.is_update_step(state.count) & finite, reselect,
                     lambda: previous_masks)
    if straight_through:  # SR-STE's decay on the weights this step's forward pass pruned
      masked_grads = jax.tree.map(
          lambda g, m, p: g + sr_ste_decay * jnp.where(m, jnp.zeros_like(p), p).astype(g.dtype)
          if sr_ste_decay else g, updates, previous_masks, params)
    else:
      masked_grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates,
                                  masks)
    inner_updates, inner_state = inner.update(masked_grads, state.inner_state, params,
                                              **extra_args)
    # A non-finite step applies nothing: zero updates, and the inner state as it was.
    new_updates = jax.tree.map(
        lambda u, m, p: jnp.where(finite, u if straight_through else jnp.where(m, u, -p),
                                  0).astype(u.dtype),
        inner_updates, masks, params)
    return new_updates, next_state(state, finite, store(masks), inner_state, estimator_state)

  return optax.GradientTransformationExtraArgs(init, update)

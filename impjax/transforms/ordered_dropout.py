"""Ordered and nested dropout: train one model that works at every width.

Each step samples one width fraction ``p`` shared by every ordered layer; a layer with ``K``
units keeps its ``ceil(p * K)`` most important units (its first ones in importance order) and
drops the rest, so every prefix of the order is trained to work alone. After training,
:func:`impjax.slicing.slice_width` cuts the model to any width. Units are ordered by a rank
vector per layer (module path): the index order (FjORD), or ranks from any importance pytree
via :func:`impjax.select.unit_ranks`, fixed or recomputed on a schedule by
:func:`importance_order`.

A unit of a module is the index along the last axis of its planned leaves (a Dense kernel's
column and its bias entry, a Conv's output channel); dropping it zeroes those entries, which
removes the unit exactly for activations with ``f(0) = 0`` (relu, linear). The classifier
output is never narrowed (the default rules leave ``head`` alone). No rescaling.

References: Horvath et al. 2021, "FjORD: Fair and Accurate Federated Learning under
heterogeneous targets with Ordered Dropout" (``p ~ U{0.2, 0.4, 0.6, 0.8, 1.0}`` per batch,
first ``ceil(p * K)`` units); Rippel et al. 2014, "Learning Ordered Representations with
Nested Dropout" (truncation index ``b ~ Geometric(rho)``).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, select, transforms
  >>> params = {"hidden": {"kernel": jnp.ones((2, 4)), "bias": jnp.ones(4)},
  ...           "head": {"kernel": jnp.ones((4, 1))}}
  >>> ranks = select.unit_ranks(
  ...     {"hidden": jnp.array([0.1, 3.0, 2.0, 0.5])})    # unit 1 first, then 2, 3, 0
  >>> narrow = transforms.at_width(params, ranks, 0.5)
  >>> narrow["hidden"]["bias"].tolist(), narrow["head"]["kernel"].shape
  ([0.0, 1.0, 1.0, 0.0], (4, 1))
"""

from __future__ import annotations

import posixpath
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import estimators
from impjax import groups
from impjax import scores
from impjax import select
from impjax import tree_utils
from impjax.transforms import masking

FJORD_WIDTHS = (0.2, 0.4, 0.6, 0.8, 1.0)

ORDER_RULES: groups.Rules = (
    groups.optional(r"(^|/)head/", groups.DENSE),
    groups.optional(r"(^|/)(kernel|bias)$", groups.neurons(-1)),
)
"""Order the output units of every kernel/bias except the classifier ``head``."""

def index_ranks(params: tree_utils.Params, rules: groups.Rules | None = None) -> dict[str,
                jax.Array]:
  """FjORD's fixed order: unit ``i`` has rank ``i`` in every ordered module.

  Example:
    >>> index_ranks({"d": {"kernel": jnp.ones((2, 3))}})["d"].tolist()
    [0, 1, 2]
  """
  the_plan = groups.plan(params, ORDER_RULES if rules is None else rules)
  units = groups.module_units(the_plan, params)
  return {m: jnp.arange(n, dtype=jnp.int32) for m, n in units.items()}


def width_masks(params: tree_utils.Params, ranks: dict[str, jax.Array], width: Any,
                rules: groups.Rules | None = None) -> tree_utils.Masks:
  """Keep-masks of width ``width``: units with rank ``< ceil(width * K)`` in every module.

  Args:
    params: the parameters.
    ranks: ``{module path: int rank per unit}`` for every ordered module.
    width: fraction in [0, 1] (may be traced); at least one unit is kept.
    rules: which leaves are ordered (default :data:`ORDER_RULES`).

  Returns:
    Bool masks broadcastable to ``params`` (scalar ``True`` for untouched leaves).

  Example:
    >>> p = {"d": {"kernel": jnp.ones((1, 4))}}
    >>> width_masks(p, {"d": jnp.array([3, 0, 1, 2])}, 0.5)["d"]["kernel"].tolist()
    [[False, True, True, False]]
  """
  tree_utils.check_fraction(width, what="width")
  the_plan = groups.plan(params, ORDER_RULES if rules is None else rules)
  units = groups.module_units(the_plan, params)
  missing = sorted(set(units) - set(ranks))
  if missing:
    raise ValueError(f"No ranks for ordered module(s) {missing}; ranks has {sorted(ranks)}.")
  for module, n in units.items():
    if np.shape(ranks[module]) != (n,):
      raise ValueError(f"ranks['{module}'] has shape {np.shape(ranks[module])}, but module "
                       f"'{module}' has {n} units.")

  def leaf(path, g, p):
    if g.kind == "dense":
      return jnp.ones((), jnp.bool_)
    module = posixpath.dirname(path)
    keep = ranks[module] < select.num_kept(width, units[module])
    return groups.expand_leaf(keep, g, np.shape(p))
  return tree_utils.map_with_path(leaf, the_plan, params)


def at_width(params: tree_utils.Params, ranks: dict[str, jax.Array], width: Any,
             rules: groups.Rules | None = None) -> tree_utils.Params:
  """The params evaluated at ``width``: dropped units zeroed (deterministic).

  Example:
    >>> at_width({"d": {"bias": jnp.ones(3)}}, {"d": jnp.array([2, 0, 1])}, 0.5)["d"]["bias"].tolist()
    [0.0, 1.0, 1.0]
  """
  return masking.apply_masks(params, width_masks(params, ranks, width, rules))


def fjord_width(key: jax.Array, widths: tuple[float, ...] = FJORD_WIDTHS) -> jax.Array:
  """FjORD's width: uniform over ``widths``, float32.

  Example:
    >>> float(fjord_width(jax.random.key(0), (0.5,)))
    0.5
  """
  for w in widths:
    tree_utils.check_fraction(w, what="width")
  return jax.random.choice(key, jnp.asarray(widths, jnp.float32))


def nested_width(key: jax.Array, rho: float, num_units: int) -> jax.Array:
  """Nested dropout's width ``b / K`` with ``b ~ Geometric(rho)`` truncated to ``[1, K]``.

  Example:
    >>> float(nested_width(jax.random.key(0), 1.0, 8))  # rho = 1: always the first unit
    0.125
  """
  if not 0.0 < rho <= 1.0:
    raise ValueError(f"nested dropout rho must lie in (0, 1], got {rho}.")
  b = jnp.clip(jax.random.geometric(key, rho, dtype=jnp.int32), 1, num_units)
  return b.astype(jnp.float32) / num_units


def ordered_dropout(loss_fn: Callable[..., Any],
                    sample_width: Callable[[jax.Array], jax.Array] = fjord_width,
                    rules: groups.Rules | None = None, *,
                    sandwich: tuple[float, ...] = (),
                    structure: Any = None) -> Callable[..., Any]:
  """Wraps ``loss_fn(params, *args, **kwargs)`` to train with ordered (or nested) dropout.

  The wrapped function is ``(params, key, ranks, *args, **kwargs)``: it samples one width with
  ``sample_width(key)`` (FjORD by default; ``functools.partial(nested_width, rho=..., 
  num_units=...)`` for nested dropout) and calls ``loss_fn`` on :func:`at_width` of the params.
  Evaluate a width with ``loss_fn(at_width(params, ranks, width), ...)``.

  ``sandwich`` adds fixed widths trained on every step, e.g. ``(0.2, 1.0)`` for the smallest
  and the full model (the sandwich rule of Yu & Huang 2019, "Universally Slimmable
  Networks"): the loss is then the mean of the scalar losses at the sampled width and at each
  sandwich width, one forward and backward pass per width.

  ``structure`` (a :class:`impjax.structure.Structure` of any model) orders its discovered MLP
  units and heads instead of module output units: ``ranks`` then come from
  :func:`impjax.structure.unit_ranks` and each width is :func:`impjax.structure.at_width`, so
  the residual stream, head widths, norms, stem and classifier are never narrowed.

  Example:
    >>> loss = lambda p: jnp.sum(p["d"]["bias"])
    >>> wrapped = ordered_dropout(loss, lambda key: jnp.float32(0.25))
    >>> float(wrapped({"d": {"bias": jnp.ones(8)}}, jax.random.key(0), {"d": jnp.arange(8)}))
    2.0
  """
  for w in sandwich:
    tree_utils.check_fraction(w, what="sandwich width")
  if structure is None:
    narrow = lambda params, ranks, w: at_width(params, ranks, w, rules)
  elif rules is not None:
    raise ValueError("ordered_dropout takes rules or a structure, not both: the structure's "
                     "groups say which units are ordered.")
  else:
    from impjax.structure import ordering  # pylint: disable=g-import-not-at-top
    narrow = lambda params, ranks, w: ordering.at_width(structure, params, ranks, w)

  def wrapped(params, key, ranks, *args, **kwargs):
    widths = (sample_width(key),) + tuple(sandwich)
    losses = [loss_fn(narrow(params, ranks, w), *args, **kwargs) for w in widths]
    return sum(losses) / len(losses)
  return wrapped


class ImportanceOrderState(NamedTuple):
  """State of :func:`importance_order`.

  Attributes:
    count: updates so far (int32).
    ranks: ``{module path: int32 ranks}``, the current order.
    estimator_state: the criterion's estimator state (``()`` for data-free criteria).
  """
  count: jax.Array
  ranks: dict[str, jax.Array]
  estimator_state: Any


def importance_order(criterion: str | scores.Criterion = "magnitude", *, every: int = 0,
                     rules: groups.Rules | None = None, reduce: str = "sum",
                     estimator: Callable[[estimators.Statistic],
                                         estimators.Estimator] | None = None,
                     ) -> estimators.Estimator:
  """Unit order kept up to date by importance: optax-style ``init``/``update``.

  ``init(params)`` starts from the index order (FjORD). ``update(state, params, grads=None)``
  feeds the criterion's statistic to its estimator and, every ``every`` updates, re-ranks the
  units by :func:`impjax.groups.unit_scores` of the criterion's importance; ``every=0`` keeps
  the order fixed. Returns ``(ranks, new_state)``, jit-able.

  Example:
    >>> order = importance_order("magnitude", every=1)
    >>> params = {"d": {"kernel": jnp.array([[1.0, -3.0, 2.0]])}}
    >>> ranks, state = order.update(order.init(params), params)
    >>> ranks["d"].tolist()
    [2, 0, 1]
  """
  if every < 0:
    raise ValueError(f"every must be >= 0, got {every}.")
  crit = scores.criterion(criterion) if isinstance(criterion, str) else criterion
  the_rules = ORDER_RULES if rules is None else rules
  est = None
  if crit.statistic is not None:
    est = (estimator or crit.estimator)(crit.statistic)

  def init(params):
    return ImportanceOrderState(jnp.zeros((), jnp.int32), index_ranks(params, the_rules),
                                () if est is None else est.init(params))

  def update(state, params, grads=None, axis_name=None):
    if est is None:
      estimate, estimator_state = None, state.estimator_state
    else:
      estimate, estimator_state = est.update(state.estimator_state, params, grads,
                                             axis_name=axis_name)
    count = state.count + 1

    def rerank():
      the_plan = groups.plan(params, the_rules)
      importance = crit.importance(params, estimate)
      return select.unit_ranks(groups.unit_scores(importance, the_plan, reduce))

    due = (count % every == 0) if every else jnp.array(False)
    ranks = lax.cond(due, rerank, lambda: state.ranks)
    return ranks, ImportanceOrderState(count, ranks, estimator_state)

  return estimators.Estimator(init, update)

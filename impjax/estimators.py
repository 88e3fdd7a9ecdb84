"""Estimators: optax-style ``init``/``update`` pairs that accumulate a statistic over steps.

``update(state, params, grads, axis_name=None)`` returns ``(estimate, new_state)``. With
``axis_name`` set, the per-step statistic is averaged across that mapped axis
(``lax.pmean``) first, so every device holds the same estimate.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import estimators, scores
  >>> est = estimators.running_mean(lambda p, g: scores.fisher(g))
  >>> params = {"w": jnp.zeros(1)}
  >>> s = est.init(params)
  >>> _, s = est.update(s, params, {"w": jnp.array([1.0])})
  >>> value, s = est.update(s, params, {"w": jnp.array([3.0])})
  >>> value["w"].tolist()
  [5.0]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from tqdm import tqdm

from impjax import tree_utils

Statistic = Callable[[Any, Any], Any]


class Estimator(NamedTuple):
  """Pure functions, like ``optax.GradientTransformation``.

  Attributes:
    init: ``params -> state``.
    update: ``(state, params, grads, axis_name=None) -> (estimate, state)``.
    read: ``state -> estimate``, for consumers that need the estimate only on some steps
      (under ``lax.cond``), so the per-step update does no more than accumulate.
  """
  init: Callable[[Any], Any]
  update: Callable[..., tuple[Any, Any]]
  read: Callable[[Any], Any] | None = None


class EmaState(NamedTuple):
  count: jax.Array
  value: Any


class RunningMeanState(NamedTuple):
  count: jax.Array
  value: Any


class SumState(NamedTuple):
  count: jax.Array
  value: Any


def _zeros(statistic: Statistic, params: tree_utils.Params, dtype) -> Any:
  shapes = jax.eval_shape(statistic, params, params)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, dtype), shapes)


def _store(tree: Any, dtype) -> Any:
  return jax.tree.map(lambda v: v.astype(dtype), tree)


def _read(tree: Any) -> Any:
  return jax.tree.map(lambda v: v.astype(jnp.float32), tree)


def _observe(statistic: Statistic, params, grads, axis_name):
  stat = jax.tree.map(lambda x: x.astype(jnp.float32), statistic(params, grads))
  if axis_name is not None:
    stat = lax.pmean(stat, axis_name)
  return stat


def ema(statistic: Statistic, decay: float = 0.99, debias: bool = True,
        dtype=jnp.float32) -> Estimator:
  """Exponential moving average ``v <- decay * v + (1 - decay) * stat`` (Adam-style debias).

  ``dtype`` is the storage type of the state (``jnp.bfloat16`` halves its memory); the
  arithmetic and the returned estimate are float32.

  Example:
    >>> est = ema(lambda p, g: g, decay=0.5)
    >>> s = est.init({"w": jnp.zeros(1)})
    >>> v, s = est.update(s, None, {"w": jnp.array([2.0])})
    >>> v["w"].tolist()
    [2.0]
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"ema decay must lie in [0, 1), got {decay}.")

  def init(params):
    return EmaState(jnp.zeros((), jnp.int32), _zeros(statistic, params, dtype))

  def update(state, params, grads=None, axis_name=None):
    stat = _observe(statistic, params, grads, axis_name)
    value = jax.tree.map(lambda v, s: decay * v + (1.0 - decay) * s, _read(state.value), stat)
    count = state.count + 1
    return debiased(count, value), EmaState(count, _store(value, dtype))

  def debiased(count, value):
    if not debias:
      return value
    correction = 1.0 - decay ** count.astype(jnp.float32)
    return jax.tree.map(lambda v: v / correction, value)

  return Estimator(init, update, lambda state: debiased(state.count, _read(state.value)))


def _accumulating(statistic: Statistic, dtype, state_type: type,
                  combine: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]) -> Estimator:
  """An estimator whose state is ``state_type(count, value)`` and whose update is
  ``value = combine(value, statistic, count)`` leaf by leaf (``count`` after the update)."""
  def init(params):
    return state_type(jnp.zeros((), jnp.int32), _zeros(statistic, params, dtype))

  def update(state, params, grads=None, axis_name=None):
    stat = _observe(statistic, params, grads, axis_name)
    count = state.count + 1
    value = jax.tree.map(lambda v, x: combine(v, x, count), _read(state.value), stat)
    return value, state_type(count, _store(value, dtype))

  return Estimator(init, update, lambda state: _read(state.value))


def running_mean(statistic: Statistic, dtype=jnp.float32) -> Estimator:
  """Exact mean of the statistic over all updates so far (calibration sets).

  ``dtype`` is the storage type of the state; arithmetic is float32.

  Example:
    >>> est = running_mean(lambda p, g: g)
    >>> s = est.init({"w": jnp.zeros(1)})
    >>> _, s = est.update(s, None, {"w": jnp.array([1.0])})
    >>> est.update(s, None, {"w": jnp.array([2.0])})[0]["w"].tolist()
    [1.5]
  """
  return _accumulating(statistic, dtype, RunningMeanState,
                       lambda v, x, count: v + (x - v) / count.astype(jnp.float32))


def sum(statistic: Statistic, dtype=jnp.float32) -> Estimator:  # pylint: disable=redefined-builtin
  """Running sum of the statistic (movement pruning accumulates ``-w * g`` this way).

  ``dtype`` is the storage type of the state; arithmetic is float32.

  Example:
    >>> est = sum(lambda p, g: jax.tree.map(lambda w, x: -w * x, p, g))  # movement
    >>> p = {"w": jnp.array([2.0])}
    >>> s = est.init(p)
    >>> for g in (1.0, -3.0):
    ...   value, s = est.update(s, p, {"w": jnp.array([g])})
    >>> value["w"].tolist()
    [4.0]
  """
  return _accumulating(statistic, dtype, SumState, lambda v, x, count: v + x)


BY_NAME = {"ema": ema, "running_mean": running_mean, "sum": sum}


def calibrate(estimator: Estimator, params: tree_utils.Params, batches: Iterable[Any],
              grad_fn: Callable[[Any, Any], Any], *, total: int | None = None,
              progress: bool = True) -> Any:
  """Runs ``estimator`` over a calibration set and returns the final estimate.

  Args:
    estimator: an :class:`Estimator`.
    params: the (fixed) parameters.
    batches: an iterable of batches.
    grad_fn: ``(params, batch) -> grads``; it is jitted together with the update.
    total: number of batches, for the progress bar.
    progress: show a progress bar.

  Example:
    >>> est = running_mean(lambda p, g: g)
    >>> grad_fn = lambda p, b: {"w": b}
    >>> calibrate(est, {"w": jnp.zeros(1)}, [jnp.ones(1), 3 * jnp.ones(1)], grad_fn,
    ...           progress=False)["w"].tolist()
    [2.0]
  """
  @jax.jit
  def step(state, params, batch):  # params as an argument: never baked in as constants
    return estimator.update(state, params, grad_fn(params, batch))

  state, estimate = estimator.init(params), None
  for batch in tqdm(batches, total=total, desc="calibrate", disable=not progress):
    estimate, state = step(state, params, batch)
  if estimate is None:
    raise ValueError("calibrate got no batches.")
  return estimate


def calibrated_importance(criterion: Any, params: tree_utils.Params, batches: Iterable[Any],
                          grad_fn: Callable[[Any, Any], Any], *,
                          estimator: Callable[[Statistic], Estimator] = running_mean,
                          total: int | None = None, progress: bool = True) -> Any:
  """A criterion's importance with its statistic averaged over a calibration set.

  Data-free criteria (magnitude, random) ignore ``batches``.

  Args:
    criterion: an ``impjax.scores.Criterion``.
    params: the (fixed) parameters.
    batches: an iterable of batches.
    grad_fn: ``(params, batch) -> grads``.
    estimator: factory of the estimator that averages the statistic.
    total: number of batches, for the progress bar.
    progress: show a progress bar.

  Example:
    >>> from impjax import scores
    >>> grad_fn = lambda p, b: {"w": b}
    >>> imp = calibrated_importance(scores.criterion("obd"), {"w": jnp.array([2.0])},
    ...                             [jnp.ones(1), 3 * jnp.ones(1)], grad_fn, progress=False)
    >>> imp["w"].tolist()  # 0.5 * 2^2 * mean(1, 9)
    [10.0]
  """
  estimate = None
  if criterion.statistic is not None:
    estimate = calibrate(estimator(criterion.statistic), params, batches, grad_fn, total=total,
                         progress=progress)
  return criterion.importance(params, estimate)

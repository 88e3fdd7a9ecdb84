"""The criterion registry: one entry per criterion, naming its statistic, estimator and importance.

A :class:`Criterion` is how every consumer uses a score — the pruning transform, importance
ordering, calibration and the main job alike: ``statistic(params, grads)`` is the per-step
quantity (``None`` for data-free scores), ``estimator(statistic)`` builds the estimator that
accumulates it (EMA, sum, ...), and ``importance(params, estimate)`` turns the estimate into
the importance pytree. A new criterion is one :func:`register_criterion` entry, in this file
or in the user's own code; every consumer then accepts its name.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import scores
  >>> c = scores.criterion("obd")
  >>> p, g = {"w": jnp.array([2.0])}, {"w": jnp.array([1.0])}
  >>> c.importance(p, c.statistic(p, g))["w"].tolist()
  [2.0]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from impjax import estimators
from impjax.scores import fisher as fisher_lib
from impjax.scores import gradients
from impjax.scores import weights


class Criterion(NamedTuple):
  """A score as its consumers use it.

  Attributes:
    name: the criterion's name.
    statistic: ``(params, grads) -> tree`` accumulated by an estimator, or ``None`` when the
      score needs no data.
    importance: ``(params, estimate) -> importance tree`` (``estimate`` is ``None`` when
      ``statistic`` is).
    estimator: ``statistic -> impjax.estimators.Estimator`` that suits the statistic, or
      ``None`` for data-free scores.
  """
  name: str
  statistic: Callable[[Any, Any], Any] | None
  importance: Callable[[Any, Any], Any]
  estimator: Callable[[estimators.Statistic], estimators.Estimator] | None


class CriterionOptions(NamedTuple):
  """Options an entry may read: ``p`` (magnitude exponent), ``seed`` (random scores) and
  ``decay`` (of the EMA that accumulates gradient statistics)."""
  p: int = 1
  seed: int = 0
  decay: float = 0.99


CRITERIA: dict[str, Callable[[CriterionOptions], Criterion]] = {}
"""The registry: ``name -> builder(options) -> Criterion``."""


def register_criterion(name: str) -> Callable:
  """Decorator adding ``builder(options) -> Criterion`` to the registry under ``name``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> @register_criterion("squared_gradient_sum")
    ... def _(options):
    ...   return Criterion("squared_gradient_sum", lambda p, g: jax.tree.map(jnp.square, g),
    ...                    lambda p, estimate: estimate, estimators.sum)
    >>> criterion("squared_gradient_sum").estimator is estimators.sum
    True
    >>> del CRITERIA["squared_gradient_sum"]
  """
  if name in CRITERIA:
    raise ValueError(f"Criterion '{name}' is already registered.")

  def add(builder: Callable[[CriterionOptions], Criterion]) -> Callable:
    CRITERIA[name] = builder
    return builder
  return add


def criterion(name: str, *, p: int = 1, seed: int = 0, decay: float = 0.99) -> Criterion:
  """The registered criterion ``name`` built with these options.

  Args:
    name: a key of :data:`CRITERIA` (built in: ``magnitude``, ``random``, ``saliency``,
      ``taylor``, ``fisher``, ``obd``, ``movement``).
    p: exponent of ``magnitude`` (1 or 2).
    seed: seed of ``random`` (scores are fixed for a given seed and tree).
    decay: decay of the EMA of the gradient criteria.

  Returns:
    A :class:`Criterion`.

  Example:
    >>> criterion("magnitude", p=2).statistic is None
    True
  """
  if name not in CRITERIA:
    raise ValueError(f"Unknown criterion '{name}'. Known: {sorted(CRITERIA)}.")
  return CRITERIA[name](CriterionOptions(p, seed, decay))


def _identity(params, estimate):
  del params
  return estimate


def _ema(options: CriterionOptions) -> Callable[[estimators.Statistic], estimators.Estimator]:
  return lambda statistic: estimators.ema(statistic, decay=options.decay)


def _fisher_statistic(params, grads):
  del params
  return fisher_lib.fisher(grads)


@register_criterion("magnitude")
def _magnitude(options: CriterionOptions) -> Criterion:
  weights.magnitude({}, p=options.p)  # validates p early
  return Criterion("magnitude", None,
                   lambda params, _: weights.magnitude(params, p=options.p), None)


@register_criterion("random")
def _random(options: CriterionOptions) -> Criterion:
  key = jax.random.key(options.seed)
  return Criterion("random", None, lambda params, _: weights.random(key, params), None)


@register_criterion("saliency")
def _saliency(options: CriterionOptions) -> Criterion:
  return Criterion("saliency", lambda params, grads: gradients.saliency(grads), _identity,
                   _ema(options))


@register_criterion("taylor")
def _taylor(options: CriterionOptions) -> Criterion:
  return Criterion("taylor", gradients.taylor, _identity, _ema(options))


@register_criterion("fisher")
def _fisher(options: CriterionOptions) -> Criterion:
  return Criterion("fisher", _fisher_statistic, _identity, _ema(options))


@register_criterion("obd")
def _obd(options: CriterionOptions) -> Criterion:
  return Criterion("obd", _fisher_statistic, fisher_lib.obd, _ema(options))


@register_criterion("movement")
def _movement(options: CriterionOptions) -> Criterion:
  del options
  return Criterion("movement", gradients.movement, _identity, estimators.sum)

"""Named criteria: one score, split into what is accumulated over steps and what ranks.

A :class:`Criterion` is how transforms consume a score: ``statistic(params, grads)`` is the
per-step quantity an estimator averages (``None`` for data-free scores) and
``importance(params, stat)`` turns the estimate into the importance pytree. The same criterion
drives masks, dropout orders or bit allocations.

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

from impjax.scores import fisher as fisher_lib
from impjax.scores import gradients
from impjax.scores import weights


class Criterion(NamedTuple):
  """A score as transforms use it.

  Attributes:
    name: the criterion's name.
    statistic: ``(params, grads) -> tree`` accumulated by an estimator, or ``None`` when the
      score needs no data.
    importance: ``(params, estimate) -> importance tree`` (``estimate`` is ``None`` when
      ``statistic`` is).
    accumulate: the estimator that suits the statistic: ``"ema"``, ``"sum"`` or ``None``.
  """
  name: str
  statistic: Callable[[Any, Any], Any] | None
  importance: Callable[[Any, Any], Any]
  accumulate: str | None


def _identity(params, estimate):
  del params
  return estimate


def criterion(name: str, *, p: int = 1, seed: int = 0) -> Criterion:
  """Builds the named criterion.

  Args:
    name: one of ``magnitude``, ``random``, ``saliency``, ``taylor``, ``fisher``, ``obd``,
      ``movement``.
    p: exponent of ``magnitude`` (1 or 2).
    seed: seed of ``random`` (scores are fixed for a given seed and tree).

  Returns:
    A :class:`Criterion`.

  Example:
    >>> criterion("magnitude", p=2).statistic is None
    True
  """
  if name == "magnitude":
    weights.magnitude({}, p=p)  # validates p early
    return Criterion(name, None, lambda params, _: weights.magnitude(params, p=p), None)
  if name == "random":
    return Criterion(name, None,
                     lambda params, _: weights.random(jax.random.key(seed), params), None)
  if name == "saliency":
    return Criterion(name, lambda params, grads: gradients.saliency(grads), _identity, "ema")
  if name == "taylor":
    return Criterion(name, gradients.taylor, _identity, "ema")
  if name == "fisher":
    return Criterion(name, lambda params, grads: fisher_lib.fisher(grads), _identity, "ema")
  if name == "obd":
    return Criterion(name, lambda params, grads: fisher_lib.fisher(grads), fisher_lib.obd, "ema")
  if name == "movement":
    return Criterion(name, gradients.movement, _identity, "sum")
  raise ValueError(f"Unknown criterion '{name}'. Known: {sorted(NAMES)}.")


NAMES = ("magnitude", "random", "saliency", "taylor", "fisher", "obd", "movement")

"""Sparsity schedules: the target sparsity at each step, and the steps that update masks.

Reference: Zhu & Gupta 2017, "To prune, or not to prune" (polynomial/cubic schedule
``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt))^3``, masks updated every ``dt`` steps);
iterative pruning as in Frankle & Carbin 2019 (each round prunes a fixed fraction of what is
left).

Example:
  >>> from impjax import schedules
  >>> sched = schedules.polynomial(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
  >>> round(float(sched.sparsity(50)), 4), bool(sched.is_update_step(50))
  (0.7875, True)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from impjax import tree_utils


class Schedule(NamedTuple):
  """``sparsity(step)`` and ``is_update_step(step)``, both jit-able; ``final`` is static."""
  sparsity: Callable[[jax.Array], jax.Array]
  is_update_step: Callable[[jax.Array], jax.Array]
  final: float


def _check(final: float, begin_step: int, end_step: int, frequency: int) -> None:
  tree_utils.check_fraction(final, what="final sparsity")
  if begin_step < 0 or end_step < begin_step:
    raise ValueError(f"Need 0 <= begin_step <= end_step, got {begin_step}, {end_step}.")
  if frequency < 1:
    raise ValueError(f"frequency must be >= 1, got {frequency}.")


def one_shot(sparsity: float, step: int = 0) -> Schedule:
  """Prune once to ``sparsity`` at ``step`` and keep the masks afterwards.

  Example:
    >>> float(one_shot(0.5, step=3).sparsity(2)), bool(one_shot(0.5, step=3).is_update_step(3))
    (0.0, True)
  """
  _check(sparsity, step, step, 1)
  return Schedule(lambda t: jnp.where(jnp.asarray(t) >= step, sparsity, 0.0).astype(jnp.float32),
                  lambda t: jnp.asarray(t) == step, float(sparsity))


def polynomial(initial: float, final: float, begin_step: int, end_step: int,
               frequency: int = 100, power: int = 3) -> Schedule:
  """Gradual pruning from ``initial`` to ``final`` sparsity (Zhu & Gupta; ``power=3``).

  Masks update at ``begin_step + k * frequency`` up to ``end_step`` (which always updates).
  """
  _check(final, begin_step, end_step, frequency)
  tree_utils.check_fraction(initial, what="initial sparsity")
  span = end_step - begin_step

  def sparsity(t):
    if span:
      progress = jnp.clip((jnp.asarray(t, jnp.float32) - begin_step) / span, 0.0, 1.0)
    else:  # begin_step == end_step: jump to ``final`` at that (update) step
      progress = jnp.ones((), jnp.float32)
    value = final + (initial - final) * (1.0 - progress) ** power
    return jnp.where(jnp.asarray(t) >= begin_step, value, 0.0).astype(jnp.float32)

  def is_update_step(t):
    t = jnp.asarray(t)
    on_grid = (t >= begin_step) & (t <= end_step) & ((t - begin_step) % frequency == 0)
    return on_grid | (t == end_step)

  return Schedule(sparsity, is_update_step, float(final))


def iterative(final: float, rounds: int, begin_step: int, frequency: int) -> Schedule:
  """``rounds`` pruning rounds, ``frequency`` steps apart, each removing the same fraction of
  the remaining weights: after round ``r`` the sparsity is ``1 - (1 - final)^(r / rounds)``.

  Example:
    >>> s = iterative(0.75, rounds=2, begin_step=0, frequency=10)
    >>> float(s.sparsity(0)), float(s.sparsity(10))
    (0.5, 0.75)
  """
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}.")
  last = begin_step + (rounds - 1) * frequency
  _check(final, begin_step, last, frequency)

  def sparsity(t):
    t = jnp.asarray(t)
    done = jnp.clip((t - begin_step) // frequency + 1, 0, rounds).astype(jnp.float32)
    value = 1.0 - (1.0 - final) ** (done / rounds)
    return jnp.where(t >= begin_step, value, 0.0).astype(jnp.float32)

  def is_update_step(t):
    t = jnp.asarray(t)
    return (t >= begin_step) & (t <= last) & ((t - begin_step) % frequency == 0)

  return Schedule(sparsity, is_update_step, float(final))


def hold(sparsity: float = 0.0) -> Schedule:
  """Never re-select: the masks a transform starts from are kept for the whole run (recovery
  fine-tuning after one-shot pruning, with :func:`impjax.transforms.hold_masks`).
  ``sparsity`` is what the masks hold, for reports.

  Example:
    >>> bool(hold(0.5).is_update_step(0)), float(hold(0.5).sparsity(7))
    (False, 0.5)
  """
  tree_utils.check_fraction(sparsity, what="sparsity")
  return Schedule(lambda t: jnp.full((), sparsity, jnp.float32),
                  lambda t: jnp.zeros((), jnp.bool_), float(sparsity))

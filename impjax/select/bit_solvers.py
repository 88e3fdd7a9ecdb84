"""Bit-allocation solvers on flat arrays: one choice per unit under a total-cost budget.

A table has one row per unit and one column per candidate precision, ``costs`` the bits of
each (unit, choice). Three solvers, jittable with costs and budget static:

* :func:`knapsack`: the exact multiple-choice knapsack (minimum total sensitivity whose
  bits fit the budget) by dynamic programming over costs divided by their common divisor,
  as HAWQ-V3's integer program but without a solver;
* :func:`greedy`: start every unit at the cheapest choice and repeatedly take the upgrade
  with the most sensitivity removed per extra bit that still fits;
* :func:`lowering`: Layer-Wise Quantization's ordering: every unit at ``high``, then the
  least important units, in order, drop to ``low`` until the average meets the budget.

References: Yao et al. 2021, "HAWQ-V3: Dyadic Neural Network Quantization"; Dumitru et al.
2024, "Layer-Wise Quantization: A Pragmatic and Effective Method for Quantizing LLMs Beyond
Integer Bit-Levels".

Example:
  >>> import jax.numpy as jnp, numpy as np
  >>> from impjax import select
  >>> table = jnp.array([[9.0, 1.0], [1.0, 0.5]])   # unit 0 suffers far more at 2 bits
  >>> costs = np.array([[2, 4], [2, 4]])             # bits of one-weight units
  >>> select.knapsack(table, costs, 6).tolist()
  [1, 0]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np


def _check_fits(costs: np.ndarray, budget: int) -> None:
  """Raises unless every unit at its cheapest choice fits ``budget``."""
  cheapest = int(costs.min(axis=1).sum())
  if cheapest > budget:
    raise ValueError(f"No allocation fits the budget of {budget}: the cheapest costs "
                     f"{cheapest}.")


def knapsack(table: jax.Array, costs: np.ndarray, budget: int) -> jax.Array:
  """Exact multiple-choice knapsack: one choice per unit minimizing the summed sensitivity
  with summed cost at most ``budget``.

  Dynamic programming over total cost (divided by the greatest common divisor of all costs)
  with ``lax.scan`` over units, then a backward pass; ties go to the cheaper choice and the
  cheaper total. Time and memory grow with ``units * budget / gcd``.

  Args:
    table: ``(units, choices)`` float sensitivities (may be traced).
    costs: ``(units, choices)`` non-negative integer costs (static numpy).
    budget: the largest total cost (static int).

  Returns:
    ``(units,)`` int32 choice indices.

  Example:
    >>> knapsack(jnp.array([[3.0, 0.0], [2.0, 0.0]]), np.array([[1, 2], [1, 2]]), 3).tolist()
    [1, 0]
  """
  costs = np.asarray(costs, np.int64)
  if np.any(costs < 0):
    raise ValueError("knapsack costs must be non-negative.")
  _check_fits(costs, budget)
  divisor = math.gcd(*costs.ravel().tolist(), 0) or 1
  steps = costs // divisor
  width = min(budget // divisor, int(steps.max(axis=1).sum())) + 1
  return _knapsack(jnp.asarray(table, jnp.float32), jnp.asarray(steps, jnp.int32), width=width)


@functools.partial(jax.jit, static_argnames=("width",))
def _knapsack(table: jax.Array, steps: jax.Array, *, width: int) -> jax.Array:
  """The dynamic program of :func:`knapsack` over totals ``0 .. width - 1``."""
  index = jnp.arange(width)

  def forward(best, unit):
    sens, cost = unit
    shifted = jax.vmap(lambda c: jnp.where(index >= c, jnp.roll(best, c), jnp.inf))(cost)
    candidates = shifted + sens[:, None]
    return jnp.min(candidates, axis=0), jnp.argmin(candidates, axis=0).astype(jnp.int32)

  start = jnp.full((width,), jnp.inf, jnp.float32).at[0].set(0.0)
  final, picks = lax.scan(forward, start, (table, steps))

  def backward(spent, unit):
    row, cost = unit
    choice = row[spent]
    return spent - cost[choice], choice
  _, chosen = lax.scan(backward, jnp.argmin(final).astype(jnp.int32), (picks, steps),
                       reverse=True)
  return chosen


def greedy(table: jax.Array, costs: np.ndarray, budget: int) -> jax.Array:
  """Greedy allocation by sensitivity removed per extra bit.

  Every unit starts at its first (cheapest) choice; each round applies, among the upgrades
  that still fit and lower the sensitivity, the one with the largest
  ``(table[u, now] - table[u, c]) / (costs[u, c] - costs[u, now])`` (ties: lowest unit,
  then cheapest choice), until none is left.

  Takes and returns what :func:`knapsack` does, with ``costs`` strictly increasing along
  the choices.

  Example:
    >>> greedy(jnp.array([[3.0, 0.0], [2.0, 0.0]]), np.array([[1, 2], [1, 2]]), 3).tolist()
    [1, 0]
  """
  costs = np.asarray(costs, np.int64)
  if np.any(np.diff(costs, axis=1) <= 0):
    raise ValueError("greedy needs costs strictly increasing along the choices.")
  _check_fits(costs, budget)
  return _greedy(jnp.asarray(table, jnp.float32), jnp.asarray(costs, jnp.int32),
                 jnp.int32(budget))


@jax.jit
def _greedy(table: jax.Array, cost: jax.Array, budget: jax.Array) -> jax.Array:
  """The upgrade loop of :func:`greedy`."""
  units, num_choices = table.shape
  rows = jnp.arange(units)

  def ratios(state):
    chosen, spent = state
    gain = table[rows, chosen][:, None] - table
    extra = cost - cost[rows, chosen][:, None]
    ok = ((jnp.arange(num_choices)[None, :] > chosen[:, None]) & (gain > 0)
          & (extra <= budget - spent))
    return jnp.where(ok, gain / jnp.where(ok, extra, 1).astype(jnp.float32), -jnp.inf), extra

  def cond(state):
    return jnp.max(ratios(state)[0]) > -jnp.inf

  def body(state):
    chosen, spent = state
    ratio, extra = ratios(state)
    flat = jnp.argmax(ratio)
    unit, choice = flat // num_choices, flat % num_choices
    return chosen.at[unit].set(choice), spent + extra[unit, choice]

  start = (jnp.zeros((units,), jnp.int32), jnp.sum(cost[:, 0]))
  return lax.while_loop(cond, body, start)[0]


def lowering(importance: jax.Array, sizes: np.ndarray, low: int, high: int,
             avg_bits: float) -> jax.Array:
  """Layer-Wise Quantization: the least important units drop from ``high`` to ``low`` bits,
  in order of importance, until the size-weighted average is at most ``avg_bits``.

  Args:
    importance: ``(units,)`` scores, higher = keep at ``high`` (may be traced; ties: the
      earlier unit drops first).
    sizes: ``(units,)`` weights per unit (static).
    low: the lower bit-width.
    high: the higher bit-width.
    avg_bits: the target average, in ``[low, high]``.

  Returns:
    ``(units,)`` int32 choice indices: 0 for ``low``, 1 for ``high``.

  Example:
    >>> lowering(jnp.array([3.0, 1.0, 2.0, 4.0]), np.ones(4), 2, 4, 3.0).tolist()
    [1, 0, 0, 1]
  """
  if not low < high:
    raise ValueError(f"lowering needs low < high, got low={low}, high={high}.")
  if not low <= avg_bits <= high:
    raise ValueError(f"avg_bits {avg_bits} must lie in [low, high] = [{low}, {high}].")
  sizes = np.asarray(sizes, np.int64)
  to_save = math.ceil((high - avg_bits) * int(sizes.sum()))
  return _lowering(jnp.asarray(importance, jnp.float32),
                   jnp.asarray(sizes * (high - low), jnp.int32), jnp.int32(to_save))


@jax.jit
def _lowering(importance: jax.Array, savings: jax.Array, to_save: jax.Array) -> jax.Array:
  """Lowers the shortest prefix of the importance order whose savings reach ``to_save``."""
  order = jnp.argsort(importance, stable=True)
  saved = jnp.cumsum(savings[order])
  count = jnp.where(to_save > 0, jnp.searchsorted(saved, to_save, side="left") + 1, 0)
  lowered = jnp.zeros(savings.shape, jnp.bool_).at[order].set(jnp.arange(savings.size) < count)
  return jnp.where(lowered, 0, 1).astype(jnp.int32)

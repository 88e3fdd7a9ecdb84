"""DSnoT: training-free refinement of a one-shot mask by prune-and-grow swaps.

For a Flax kernel ``W`` ``(in, out)`` pruned to ``keep`` (e.g. by Wanda), every output ``o`` has
an expected reconstruction error ``e_o = sum over pruned j of W_jo * E[x_j]``: the mean of what
the pruned weights contributed. DSnoT swaps, output by output, one pruned weight back in and one
kept weight out per cycle, so that ``e_o`` shrinks without changing sign: it regrows, from the
pruned weights ordered by ``W_jo E[x_j] / Var[x_j]``, the one at the end that reduces ``e_o``
(the largest when ``e_o > 0``, the most negative otherwise), and prunes, from the kept weights
of least Wanda score ``|W_jo| sqrt(E[x_j^2])`` whose contribution has the opposite sign to
``e_o``, the next one. An output stops when ``|e_o|`` falls to ``threshold``, when a swap would
flip its sign, or after ``max_cycles`` swaps. Every output keeps its count. (Where the
reference implementation would walk past the end of a candidate list, the output stops.)

Reference: Zhang et al. 2024, "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse
LLMs" (ICLR; unstructured DSnoT, ``max_cycle_time`` 50, ``update_threshold`` 0.1, the
variance to the power 1 for regrowing).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import pruning
  >>> w = jnp.array([[1.0], [0.2], [-0.3], [-0.6]])
  >>> keep = jnp.array([[True], [True], [False], [False]])  # e = -0.3 - 0.6 = -0.9
  >>> new = pruning.dsnot(w, keep, mean=jnp.ones(4), var=jnp.ones(4), sq=jnp.ones(4))
  >>> new[:, 0].tolist()  # -0.6 back, 0.2 out: e = -0.1; the next swap would flip its sign
  [True, False, False, True]
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("max_cycles",))
def dsnot(kernel: jax.Array, keep: jax.Array, *, mean: jax.Array, var: jax.Array,
          sq: jax.Array, max_cycles: int = 50, threshold: float = 0.1) -> jax.Array:
  """The refined keep mask of ``kernel`` ``(in, out)`` (every output's count unchanged).

  Args:
    kernel: the dense kernel ``(in, out)``.
    keep: its keep mask ``(in, out)`` (the same count in every output, as Wanda's).
    mean: ``E[x_j]`` of the inputs ``(in,)``.
    var: ``Var[x_j]`` ``(in,)`` (floored at a tiny value).
    sq: ``E[x_j^2]`` ``(in,)`` (the Wanda score that orders the kept weights).
    max_cycles: swaps per output at most.
    threshold: an output stops once ``|e_o|`` is at most this.
  """
  w = jnp.asarray(kernel, jnp.float32).T  # (out, in): one row per output
  kept = jnp.asarray(keep).T
  mean, var, sq = (jnp.asarray(v, jnp.float32) for v in (mean, var, sq))
  n_in = w.shape[1]
  contribution = w * mean[None, :]  # W_jo E[x_j]
  error = jnp.sum(jnp.where(kept, 0.0, contribution), axis=1)
  start_sign = jnp.sign(error)
  # Regrowth candidates: the pruned weights by contribution over variance, ascending; kept
  # ones after them. The last candidate of each row is at position (pruned count - 1).
  regrow_order = jnp.argsort(jnp.where(kept, jnp.inf,
                                       contribution / jnp.maximum(var, 1e-12)[None, :]),
                             axis=1, stable=True)
  # Pruning candidates: the kept weights of negative contribution by ascending Wanda score,
  # then those of non-negative contribution by descending Wanda score; pruned ones after.
  wanda_rank = jnp.argsort(jnp.argsort(jnp.where(kept, jnp.abs(w) * jnp.sqrt(sq)[None, :],
                                                 jnp.inf), axis=1, stable=True),
                           axis=1, stable=True)
  prune_key = jnp.where(contribution < 0, wanda_rank, 3 * n_in - wanda_rank)
  prune_order = jnp.argsort(jnp.where(kept, prune_key, 4 * n_in), axis=1, stable=True)
  n_kept = jnp.sum(kept, axis=1)
  rows = jnp.arange(w.shape[0])

  def cycle(_, carry):
    kept, error, active, regrow_ends, prune_ends = carry
    # Regrow from the end that lowers |e|: the most positive when e > 0, else the most negative.
    high = error > 0
    r_pos = jnp.where(high, regrow_ends[:, 1], regrow_ends[:, 0])
    regrow = regrow_order[rows, r_pos]
    # Prune from the end whose sign opposes e: a positive contribution when e < 0.
    low = error < 0
    p_pos = jnp.where(low, prune_ends[:, 1], prune_ends[:, 0])
    prune = prune_order[rows, p_pos]
    after = error + contribution[rows, prune] - contribution[rows, regrow]
    left = (regrow_ends[:, 0] <= regrow_ends[:, 1]) & (prune_ends[:, 0] <= prune_ends[:, 1])
    active = active & left & (jnp.abs(error) > threshold) & (jnp.sign(after) == start_sign)
    kept = kept.at[rows, prune].set(jnp.where(active, False, kept[rows, prune]))
    kept = kept.at[rows, regrow].set(jnp.where(active, True, kept[rows, regrow]))
    error = jnp.where(active, after, error)
    step = jnp.stack([jnp.ones_like(r_pos), -jnp.ones_like(r_pos)], 1)
    regrow_ends = regrow_ends + jnp.where(high[:, None], step * jnp.array([0, 1]),
                                          step * jnp.array([1, 0]))
    prune_ends = prune_ends + jnp.where(low[:, None], step * jnp.array([0, 1]),
                                        step * jnp.array([1, 0]))
    return kept, error, active, regrow_ends, prune_ends

  ends = lambda count: jnp.stack([jnp.zeros_like(count), count - 1], 1)
  carry = (kept, error, jnp.ones_like(error, jnp.bool_), ends(n_in - n_kept), ends(n_kept))
  kept = lax.fori_loop(0, max_cycles, cycle, carry)[0]
  return kept.T

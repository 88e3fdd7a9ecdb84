"""SparseGPT: one-shot pruning of a linear layer with Optimal-Brain-Surgeon weight updates.

For a Flax kernel ``W`` ``(in, out)`` and the layer Hessian ``H = E[x x^T]`` ``(in, in)`` of its
inputs, input rows are visited in order. The Hessian is damped (``H + damp * mean(diag H) I``),
inverted, and factored as the upper Cholesky factor ``U`` of ``H^-1``. Rows are pruned in
blocks of ``blocksize``: in each block the mask is chosen from ``w^2 / U_ii^2`` (unstructured:
the lowest ``sparsity`` fraction of the block; N:M: per group of ``m`` rows, chosen when the
group is reached), each row's error ``(w - q) / U_ii`` is pushed onto the rows after it with
``U``'s row, and a block's accumulated errors update every later block at once. Inside a block
the same lazy update runs at a finer scale: rows are pruned one by one in groups of 8 (or of
``m``), and each group's errors reach the block's later rows in one matrix product. The loops
are ``lax.scan``s, so the whole layer is one jitted computation.

Reference: Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot" (Algorithm 1 and the reference implementation's ``fasterprune``).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax.pruning import sparsegpt
  >>> x = jax.random.normal(jax.random.key(0), (256, 8))
  >>> w = jax.random.normal(jax.random.key(1), (8, 4))
  >>> new_w, keep = sparsegpt(w, x.T @ x / 256, sparsity=0.5, blocksize=4)
  >>> int(keep.sum()), bool((new_w[~keep] == 0).all())
  (16, True)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from impjax import select
from impjax import tree_utils

_ROWS_PER_UPDATE = 8
"""Rows of a block pruned one by one between two (rows x rows-after) matrix updates of the
block's later rows (a multiple of ``m`` for N:M)."""


def inverse_hessian_factor(hessian: jax.Array, damp: float = 0.01) -> tuple[jax.Array, jax.Array]:
  """``(U, dead)``: the upper Cholesky factor of the damped inverse Hessian, and the inputs
  with zero Hessian diagonal (never active; their diagonal is set to 1).

  Example:
    >>> u, dead = inverse_hessian_factor(jnp.diag(jnp.array([4.0, 0.0])), damp=0.0)
    >>> u.tolist(), dead.tolist()
    ([[0.5, 0.0], [0.0, 1.0]], [False, True])
  """
  h = hessian.astype(jnp.float32)
  diag = jnp.diag(h)
  dead = diag == 0
  h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
  h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)
  # U^T U = H^-1 with U upper means H = V V^T with V = U^-1 upper: the Cholesky factor of H
  # with rows and columns reversed, so U is one Cholesky and one triangular inverse away.
  lower = jnp.linalg.cholesky(h[::-1, ::-1])
  eye = jnp.eye(h.shape[0], dtype=h.dtype)
  return jax.scipy.linalg.solve_triangular(lower, eye, lower=True)[::-1, ::-1], dead


def _check(kernel, hessian, sparsity, n, m, blocksize):
  if kernel.ndim != 2 or hessian.shape != (kernel.shape[0],) * 2:
    raise ValueError(f"sparsegpt needs a kernel (in, out) and a Hessian (in, in); got kernel "
                     f"{kernel.shape} and Hessian {hessian.shape}.")
  if kernel.shape[0] % blocksize:
    raise ValueError(f"blocksize {blocksize} must divide the kernel's input size "
                     f"{kernel.shape[0]}.")
  if (n, m) != (0, 0):
    if not 0 < n <= m or blocksize % m:
      raise ValueError(f"N:M needs 0 < n <= m and m dividing blocksize {blocksize}; got "
                       f"n={n}, m={m}.")
  else:
    tree_utils.check_fraction(sparsity, what="sparsity")


@functools.partial(jax.jit, static_argnames=("sparsity", "n", "m", "blocksize", "damp"))
def sparsegpt(kernel: jax.Array, hessian: jax.Array, *, sparsity: float = 0.0, n: int = 0,
              m: int = 0, blocksize: int = 128, damp: float = 0.01
              ) -> tuple[jax.Array, jax.Array]:
  """Prunes ``kernel`` (in, out) with SparseGPT; returns ``(new_kernel, keep_mask)``.

  Args:
    kernel: Flax kernel ``(in, out)`` (inputs on axis 0).
    hessian: ``E[x x^T]`` of the layer inputs, ``(in, in)`` (any positive scale).
    sparsity: unstructured fraction pruned in every block (ignored for N:M).
    n: N:M — keep ``n`` of every ``m`` consecutive inputs of each output (0: unstructured).
    m: N:M group size.
    blocksize: rows per lazy-update block; must divide ``in`` (and be a multiple of ``m``).
    damp: Hessian dampening, a fraction of the mean diagonal.

  Example:
    >>> w = jnp.arange(1.0, 9.0).reshape(8, 1)
    >>> new_w, keep = sparsegpt(w, jnp.eye(8), n=2, m=4, blocksize=8)
    >>> keep[:, 0].tolist()
    [False, False, True, True, False, False, True, True]
  """
  _check(kernel, hessian, sparsity, n, m, blocksize)
  n_in, n_out = kernel.shape
  u, dead = inverse_hessian_factor(hessian, damp)
  w = jnp.where(dead[:, None], 0.0, kernel.astype(jnp.float32))
  rows = jnp.arange(n_in)

  if m:  # groups of m rows, each chosen when it is reached
    rows_per_update = m * math.gcd(blocksize // m, max(1, _ROWS_PER_UPDATE // m))
  else:
    rows_per_update = math.gcd(blocksize, _ROWS_PER_UPDATE)
  block_rows = jnp.arange(blocksize)

  def block_step(w, start):
    w1 = lax.dynamic_slice(w, (start, 0), (blocksize, n_out))
    u1 = lax.dynamic_slice(u, (start, start), (blocksize, blocksize))
    d1 = jnp.diag(u1)
    if not m:
      keep1 = select.topk(jnp.square(w1) / jnp.square(d1)[:, None], sparsity)

    def rows_step(w1, i):
      """Rows ``i ..`` of the block one by one, each pruned and its error pushed onto the
      group's later rows; then the group's errors onto the block's later rows at once."""
      group = lax.dynamic_slice(w1, (i, 0), (rows_per_update, n_out))
      u_group = lax.dynamic_slice(u1, (i, i), (rows_per_update, rows_per_update))
      qs, errs, keeps = [], [], []
      for j in range(rows_per_update):
        if m and j % m == 0:
          scores = jnp.square(group[j:j + m]) / jnp.square(jnp.diag(u_group)[j:j + m])[:, None]
          chosen = select.n_of_m_leaf(scores, n, m, 0)
        keep_row = chosen[j % m] if m else lax.dynamic_index_in_dim(keep1, i + j, 0, False)
        row = group[j]
        q = jnp.where(keep_row, row, 0.0)
        err = (row - q) / u_group[j, j]
        group = group - u_group[j][:, None] * err[None, :]  # upper triangular: rows >= j
        qs.append(q)
        errs.append(err)
        keeps.append(keep_row)
      errs = jnp.stack(errs)
      u_rows = lax.dynamic_slice(u1, (i, 0), (rows_per_update, blocksize))
      later = block_rows[:, None] >= i + rows_per_update
      w1 = w1 - jnp.where(later, u_rows.T @ errs, 0.0)
      return w1, (jnp.stack(qs), errs, jnp.stack(keeps))

    _, (q1, err1, keep1) = lax.scan(rows_step, w1, jnp.arange(0, blocksize, rows_per_update))
    q1, err1, keep1 = (x.reshape(blocksize, n_out) for x in (q1, err1, keep1))
    later = rows[:, None] >= start + blocksize
    u_rows = lax.dynamic_slice(u, (start, 0), (blocksize, n_in))
    w = w - jnp.where(later, u_rows.T @ err1, 0.0)
    w = lax.dynamic_update_slice(w, q1, (start, 0))
    return w, keep1

  w, keeps = lax.scan(block_step, w, jnp.arange(0, n_in, blocksize))
  keep = keeps.reshape(n_in, n_out)
  return jnp.where(keep, w, 0.0).astype(kernel.dtype), keep


def reconstruction_error(kernel: jax.Array, new_kernel: jax.Array, hessian: jax.Array
                         ) -> jax.Array:
  """``E ||x (W - W')||^2 = tr(D^T H D)`` with ``D = W - W'``, the objective SparseGPT lowers.

  Example:
    >>> float(reconstruction_error(jnp.ones((2, 1)), jnp.zeros((2, 1)), jnp.eye(2)))
    2.0
  """
  d = (kernel - new_kernel).astype(jnp.float32)
  return jnp.sum(d * (hessian.astype(jnp.float32) @ d))

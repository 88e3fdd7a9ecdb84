"""SparseGPT: one-shot pruning of a linear layer with Optimal-Brain-Surgeon weight updates.

For a Flax kernel ``W`` ``(in, out)`` and the layer Hessian ``H = E[x x^T]`` ``(in, in)`` of its
inputs, input rows are visited in order. The Hessian is damped (``H + damp * mean(diag H) I``),
inverted, and factored as the upper Cholesky factor ``U`` of ``H^-1``. Rows are pruned in
blocks of ``blocksize``: in each block the mask is chosen from ``w^2 / U_ii^2`` (unstructured:
the lowest ``sparsity`` fraction of the block; N:M: per group of ``m`` rows, chosen when the
group is reached), each row's error ``(w - q) / U_ii`` is pushed onto the rows after it with
``U``'s row, and a block's accumulated errors update every later block at once. Both loops are
``lax.scan``s, so the whole layer is one jitted computation.

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

import jax
import jax.numpy as jnp
from jax import lax

from impjax import select
from impjax import tree_utils


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
  lower = jnp.linalg.cholesky(h)
  h_inv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(h.shape[0], dtype=h.dtype))
  return jnp.linalg.cholesky(h_inv).T, dead


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

  def block_step(w, start):
    w1 = lax.dynamic_slice(w, (start, 0), (blocksize, n_out))
    u1 = lax.dynamic_slice(u, (start, start), (blocksize, blocksize))
    d1 = jnp.diag(u1)
    if m:
      keep1 = jnp.ones_like(w1, jnp.bool_)
    else:
      keep1 = select.topk(jnp.square(w1) / jnp.square(d1)[:, None], sparsity)

    def row_step(carry, i):
      w1, keep1 = carry
      if m:
        group = lax.dynamic_slice(w1, (i, 0), (m, n_out))
        dg = lax.dynamic_slice(d1, (i,), (m,))
        chosen = select.n_of_m_leaf(jnp.square(group) / jnp.square(dg)[:, None], n, m, 0)
        keep1 = jnp.where(i % m == 0, lax.dynamic_update_slice(keep1, chosen, (i, 0)), keep1)
      row = w1[i]
      q = jnp.where(keep1[i], row, 0.0)
      err = (row - q) / d1[i]
      w1 = w1 - u1[i][:, None] * err[None, :]  # u1 is upper triangular: rows >= i change
      return (w1, keep1), (q, err)

    (_, keep1), (q1, err1) = lax.scan(row_step, (w1, keep1), jnp.arange(blocksize))
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

"""One-shot pruning of any model's kernels from calibration statistics of its computation.

:func:`prune_kernels` prunes every kernel whose inputs :func:`impjax.structure.input_moments`
captured, by magnitude, Wanda or SparseGPT (unstructured or N:M, SparseGPT with its
Optimal-Brain-Surgeon weight updates), whatever its form: a Dense ``(in, out)``, a DenseGeneral
or Einsum kernel with several contraction or output axes, a scanned ``(layers, ...)`` stack
(each layer with its own statistics). The kernel is viewed as ``(C, O)`` — its contraction axes
flattened in the leaf's order, then the rest — pruned by :func:`impjax.pruning.prune_kernel`
exactly as the layer-wise path prunes a Linear kernel, and put back in its own layout. N:M
groups run along the last contraction axis. All kernels are calibrated on the dense model's
activations (one pass; not layer after layer). The layers that read the model's input or
write its output, and embeddings, stay dense unless asked.

Reference: Sun et al. 2024 (Wanda); Frantar & Alistarh 2023 (SparseGPT).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import structure
  >>> params = {"w1": jax.random.normal(jax.random.key(0), (8, 8)),
  ...           "w2": jax.random.normal(jax.random.key(1), (8, 8)),
  ...           "w3": jax.random.normal(jax.random.key(2), (8, 2))}
  >>> fn = lambda p, x: jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]) @ p["w3"]
  >>> x = jax.random.normal(jax.random.key(3), (64, 8))
  >>> s = structure.discover(fn, params, x)
  >>> m = structure.input_moments(fn, params, x, gram=True)
  >>> new, masks = structure.prune_kernels(params, m, s, "sparsegpt", n_of_m=(2, 4))
  >>> int(masks["w2"].sum()), masks["w1"].shape  # w1 reads the input: dense
  (32, ())
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.pruning import layerwise
from impjax.structure.capture import Moments
from impjax.structure.discovery import Structure


def _planned(s: Structure, moments: Moments, dense_io: bool) -> list[str]:
  """The captured kernels that are pruned: not embeddings, not (with ``dense_io``) a layer
  reading the model's input or writing its output."""
  out = []
  for path in sorted(moments.sq):
    k = s.kernels.get(path)
    if k is None or k.kind == "embedding" or (dense_io and (k.reads_input or k.writes_output)):
      continue
    out.append(path)
  return out


def _prune_leaf(w, axes, stats, stacked, method, sparsity, n_of_m, blocksize, damp):
  """``(new, keep)`` of one kernel: viewed as ``([L,] C, O)``, pruned, put back."""
  contraction = list(axes[1:] if stacked else axes)
  rest = [a for a in range(w.ndim) if a not in axes]
  perm = list(axes) + rest
  moved = jnp.transpose(w, perm)
  lead = 1 if stacked else 0
  c = math.prod(w.shape[a] for a in contraction)
  flat = moved.reshape(moved.shape[:lead] + (c, -1))
  block = math.gcd(c, blocksize)
  one = lambda k, st: layerwise.prune_kernel(method, k, st, sparsity=sparsity, n_of_m=n_of_m,
                                             blocksize=block, damp=damp)
  new, keep = jax.vmap(one)(flat, stats) if stacked else one(flat, stats)
  inverse = np.argsort(perm)
  return (jnp.transpose(new.reshape(moved.shape), inverse),
          jnp.transpose(keep.reshape(moved.shape), inverse))


def prune_kernels(params: tree_utils.Params, moments: Moments, s: Structure, method: str, *,
                  sparsity: float = 0.0, n_of_m: tuple[int, int] | None = None,
                  blocksize: int = 128, damp: float = 0.01, dense_io: bool = True
                  ) -> tuple[tree_utils.Params, tree_utils.Masks]:
  """``(pruned params, keep masks)`` of every captured kernel by ``method``.

  Args:
    params: the params the moments were captured with.
    moments: :func:`impjax.structure.input_moments` of calibration batches (summed), with
      ``gram=True`` for ``"sparsegpt"``.
    s: the model's :class:`~impjax.structure.Structure`.
    method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
    sparsity: unstructured fraction pruned (per output for wanda, per block for sparsegpt, per
      kernel for magnitude); ignored with ``n_of_m``.
    n_of_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs along the last contraction
      axis (a kernel whose last contraction axis ``m`` does not divide stays dense).
    blocksize: SparseGPT's block size (reduced to divide a kernel's inputs).
    damp: SparseGPT's Hessian dampening.
    dense_io: keep the layers that read the model's input or write its output dense.

  Returns:
    The params with pruned entries zero (SparseGPT's kept entries updated), and bool masks
    like the params (scalar ``True`` for every leaf left dense), ready for
    :func:`impjax.transforms.hold_masks`.
  """
  if method not in layerwise.METHODS:
    raise ValueError(f"Unknown one-shot method {method!r}. Known: {layerwise.METHODS}.")
  if n_of_m is None:
    tree_utils.check_fraction(sparsity, what="sparsity")
  if method == "sparsegpt" and not moments.gram:
    raise ValueError("sparsegpt needs the inputs' Gram matrices: capture the moments with "
                     "input_moments(..., gram=True).")
  leaves = tree_utils.leaves_by_path(params)
  paths = _planned(s, moments, dense_io)
  if n_of_m is not None:
    m = n_of_m[1]
    paths = [p for p in paths if np.shape(leaves[p])[moments.axes[p][-1]] % m == 0]
  if not paths:
    raise ValueError(f"No kernel to prune: captured {sorted(moments.sq)}, not captured "
                     f"{list(moments.missing)} (convolutions and products inside cond / while "
                     "are not captured).")
  if moments.missing:
    logging.warning("prune_kernels: kernels whose inputs were not captured stay dense: %s",
                    list(moments.missing))
  new, masks = {}, {}
  for path in paths:
    count = moments.count[path]
    stacked = count.ndim > 0
    lead = (count.shape[0],) if stacked else ()
    scale = jnp.maximum(count, 1.0).reshape(lead + (1,))
    stats = {"sq": moments.sq[path].reshape(lead + (-1,)) / scale}
    if method == "sparsegpt":
      stats["gram"] = moments.gram[path] / scale[..., None]
    new[path], masks[path] = _prune_leaf(leaves[path], moments.axes[path], stats, stacked,
                                         method, sparsity, n_of_m, blocksize, damp)
  pruned = tree_utils.map_with_path(lambda p, w: new[p].astype(w.dtype) if p in new else w,
                                    params)
  keep = tree_utils.map_with_path(lambda p, w: masks.get(p, jnp.ones((), jnp.bool_)), params)
  return pruned, keep

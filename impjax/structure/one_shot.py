"""One-shot pruning of any model's kernels from calibration statistics of its computation.

:func:`prune_sequential` prunes block after block, each calibrated on the model whose earlier
blocks are pruned (as Wanda and SparseGPT do); :func:`prune_kernels` prunes every kernel whose
inputs :func:`impjax.structure.input_moments` captured, by magnitude, Wanda, RIA, SparseGPT
(unstructured or N:M, SparseGPT with its Optimal-Brain-Surgeon weight updates) or DSnoT
(Wanda's mask refined by prune-and-grow swaps), whatever its
form: a Dense ``(in, out)``, a DenseGeneral or Einsum kernel with several contraction or output
axes, a scanned ``(layers, ...)`` stack (each layer with its own statistics). The kernel is viewed as ``(C, O)`` — its contraction axes
flattened in the leaf's order, then the rest — pruned by :func:`impjax.pruning.prune_kernel`
exactly as the layer-wise path prunes a Linear kernel, and put back in its own layout. N:M
groups run along the last contraction axis; :func:`prune_kernels` calibrates every kernel on
the dense model's activations in one pass. The layers that read the model's input or
write its output, and embeddings, stay dense unless asked.

Reference: Sun et al. 2024 (Wanda); Zhang et al. 2024 (RIA); Frantar & Alistarh 2023
(SparseGPT); Yin et al. 2024 (OWL); Zhang et al. 2024 (DSnoT).

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
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from impjax import tree_utils
from impjax.pruning import layerwise
from impjax.pruning.dsnot import dsnot
from impjax.structure import capture as capture_lib
from impjax.structure import defaults
from impjax.structure import segments as segments_lib
from impjax.structure import tracing
from impjax.structure.capture import Moments
from impjax.structure.discovery import Structure


def _planned(s: Structure, moments: Moments, dense_io: bool, params: tree_utils.Params,
             n_of_m: tuple[int, int] | None) -> list[str]:
  """The captured kernels that are pruned: not embeddings, not (with ``dense_io``) a layer
  reading the model's input or writing its output, and for N:M only those whose last
  contraction axis ``m`` divides. ``ValueError`` when none is left."""
  leaves = tree_utils.leaves_by_path(params)
  out = []
  for path in sorted(moments.sq):
    k = s.kernels.get(path)
    if k is None or not defaults.pruned_by_default(k, dense_io):
      continue
    if n_of_m is not None and np.shape(leaves[path])[moments.axes[path][-1]] % n_of_m[1]:
      continue
    out.append(path)
  if not out:
    raise ValueError(f"No kernel to prune: captured {sorted(moments.sq)}, not captured "
                     f"{list(moments.missing)} (convolutions and products inside cond / while "
                     "are not captured).")
  if moments.missing:
    logging.warning("Kernels whose inputs were not captured stay dense: %s",
                    list(moments.missing))
  return out


def _stats(moments: Moments, path: str, method: str) -> dict[str, jax.Array]:
  """The kernel's mean input statistics, ``([L,] C)`` and ``([L,] C, C)``."""
  count = moments.count[path]
  lead = tuple(np.shape(count))
  scale = jnp.maximum(count, 1.0).reshape(lead + (1,))
  stats = {"sq": moments.sq[path].reshape(lead + (-1,)) / scale}
  if method == "sparsegpt":
    stats["gram"] = moments.gram[path] / scale[..., None]
  if method == "dsnot":
    stats["mean"] = moments.sums[path].reshape(lead + (-1,)) / scale
  return stats


METHODS = layerwise.METHODS + ("dsnot",)
"""The one-shot methods; ``"dsnot"`` is Wanda's mask refined by DSnoT's swaps."""


def _check_method(method: str, n_of_m) -> None:
  if method not in METHODS:
    raise ValueError(f"Unknown one-shot method {method!r}. Known: {METHODS}.")
  if method == "dsnot" and n_of_m is not None:
    raise ValueError("dsnot refines unstructured masks: give sparsity=, not n_of_m=.")


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

  def one(k, st):
    if method != "dsnot":
      return layerwise.prune_kernel(method, k, st, sparsity=sparsity, n_of_m=n_of_m,
                                    blocksize=block, damp=damp)
    _, keep = layerwise.prune_kernel("wanda", k, st, sparsity=sparsity)
    keep = dsnot(k, keep, mean=st["mean"], var=st["sq"] - jnp.square(st["mean"]), sq=st["sq"])
    return jnp.where(keep, k, 0.0), keep

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
    method: ``"magnitude"``, ``"wanda"``, ``"ria"``, ``"sparsegpt"`` or ``"dsnot"`` (Wanda's
      mask refined by :func:`impjax.pruning.dsnot`, unstructured only).
    sparsity: unstructured fraction pruned (per output for wanda and ria, per block for
      sparsegpt, per kernel for magnitude); ignored with ``n_of_m``.
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
  _check_method(method, n_of_m)
  if n_of_m is None:
    tree_utils.check_fraction(sparsity, what="sparsity")
  if method == "sparsegpt" and not moments.gram:
    raise ValueError("sparsegpt needs the inputs' Gram matrices: capture the moments with "
                     "input_moments(..., gram=True).")
  leaves = tree_utils.leaves_by_path(params)
  new, masks = {}, {}
  for path in _planned(s, moments, dense_io, params, n_of_m):
    stacked = np.ndim(moments.count[path]) > 0
    new[path], masks[path] = _prune_leaf(leaves[path], moments.axes[path],
                                         _stats(moments, path, method), stacked, method,
                                         sparsity, n_of_m, blocksize, damp)
  pruned = tree_utils.map_with_path(lambda p, w: new[p].astype(w.dtype) if p in new else w,
                                    params)
  keep = tree_utils.map_with_path(lambda p, w: masks.get(p, jnp.ones((), jnp.bool_)), params)
  return pruned, keep


def _block(path: str) -> str:
  """A kernel's block: its path up to the first component with a digit (``layers/3``,
  ``blocks/0``, ``Transformer/encoderblock_1``), else the kernel itself."""
  found = re.match(r"^((?:[^/]*/)*?[^/]*\d[^/]*)(?:/|$)", path)
  return found.group(1) if found else path


def blocks(moments: Moments, paths: Iterable[str]) -> dict[str, list[tuple[str, int | None]]]:
  """``{block name: [(kernel path, layer or None)]}`` in the order the computation uses the
  kernels: a kernel's path up to its first numbered component (``layers/3``), and for the
  layers of scanned stacks ``"stack[i]"`` (layer ``i`` of every stacked kernel)."""
  paths = set(paths)
  units: dict[str, list[tuple[str, int | None]]] = {}
  for path in moments.sq:
    if path not in paths:
      continue
    layers = moments.count[path].shape  # arrays, or jax.eval_shape's shapes
    if layers:
      for layer in range(layers[0]):
        units.setdefault(f"stack[{layer}]", []).append((path, layer))
    else:
      units.setdefault(_block(path), []).append((path, None))
  return units


def owl_sparsities(params: tree_utils.Params, moments: Moments, s: Structure, sparsity: float,
                   *, lam: float = 0.08, outlier: float = 5.0, dense_io: bool = True
                   ) -> dict[str, float]:
  """OWL's per-block sparsities: a block's density rises with its share of outlier Wanda
  scores (``|W| * ||x||`` above ``outlier`` times the block's mean score), the densities
  spread linearly over ``[-lam, lam]`` around ``1 - sparsity`` and shifted so their mean
  is ``1 - sparsity``. For :func:`prune_sequential` ``sparsity=``.

  Reference: Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret
  Sauce for Pruning LLMs to High Sparsity" (lambda 0.08, M = 5 in its Wanda runs).

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> params = {"layers": {"0": {"w": jnp.ones((4, 4))}, "1": {"w": jnp.ones((4, 4))}}}
    >>> params["layers"]["1"]["w"] = params["layers"]["1"]["w"].at[0, 0].set(100.0)
    >>> fn = lambda p, x: x @ p["layers"]["0"]["w"] @ p["layers"]["1"]["w"]
    >>> x = jnp.ones((2, 4))
    >>> s = structure.discover(fn, params, x)
    >>> m = structure.input_moments(fn, params, x)
    >>> owl = structure.owl_sparsities(params, m, s, 0.5, dense_io=False)
    >>> {k: round(v, 2) for k, v in owl.items()}  # the block with an outlier keeps more
    {'layers/0': 0.58, 'layers/1': 0.42}
  """
  tree_utils.check_fraction(sparsity, what="sparsity")
  units = blocks(moments, _planned(s, moments, dense_io, params, None))
  importance = tree_utils.leaves_by_path(capture_lib.wanda(params, moments))
  ratios = []
  for members in units.values():
    scores = [jnp.take(importance[p], layer, moments.axes[p][0]) if layer is not None
              else importance[p] for p, layer in members]
    flat = jnp.concatenate([jnp.ravel(x) for x in scores])
    ratios.append(float(jnp.mean(flat > outlier * jnp.mean(flat))))
  ratios = np.asarray(ratios)
  spread = ratios.max() - ratios.min()
  density = (ratios - ratios.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(ratios)
  density = density - density.mean() + (1.0 - sparsity)
  return {name: float(np.clip(1.0 - d, 0.0, 1.0)) for name, d in zip(units, density)}


def prune_sequential(fn: Callable[..., Any], params: tree_utils.Params, s: Structure,
                     batches: Iterable[tuple], method: str, *,
                     token_masks: Iterable[Any] | None = None,
                     sparsity: float | Mapping[str, float] = 0.0,
                     n_of_m: tuple[int, int] | None = None, blocksize: int = 128,
                     damp: float = 0.01, dense_io: bool = True, host: bool = False,
                     progress: bool = True) -> tuple[tree_utils.Params, tree_utils.Masks]:
  """Layer-sequential one-shot pruning of any model, as Wanda and SparseGPT prune: block after
  block in the order the computation uses them, each block's kernels pruned (as
  :func:`prune_kernels` does) from statistics of the model whose earlier blocks are already
  pruned. A block is a kernel's path up to its first numbered component (``layers/3``,
  ``blocks/0``, ``encoderblock_1``); every layer of a scanned stack is a block of its own.

  Where the blocks follow one another in the traced computation, the model runs once: block
  ``i`` runs on the values live after block ``i - 1`` (the hidden states, cut from the jaxpr by
  :mod:`impjax.structure.segments`), once to capture its inputs and once, pruned, to give the
  next block its inputs; the layers of a ``scan`` run one iteration at a time. Blocks that
  cannot be cut apart (several inside one ``jit``) re-run the whole model for every block. The
  compiled segments are kept for the next call with the same function and shapes.

  Args:
    fn: the model, ``fn(params, *inputs)``.
    params: its params.
    s: its :class:`~impjax.structure.Structure`.
    batches: calibration batches, each a tuple of ``fn``'s inputs (kept in memory).
    method: ``"magnitude"``, ``"wanda"``, ``"ria"``, ``"sparsegpt"`` or ``"dsnot"`` (Wanda's
      mask refined by :func:`impjax.pruning.dsnot`, unstructured only).
    token_masks: per batch, the rows' weights for :func:`impjax.structure.input_moments`
      (e.g. the attention mask), or ``None``.
    sparsity: as for :func:`prune_kernels`, or ``{block name: sparsity}`` for every block of
      :func:`blocks` (e.g. :func:`owl_sparsities`).
    n_of_m, blocksize, damp, dense_io: as for :func:`prune_kernels`.
    host: keep every batch's hidden states between blocks on the host (numpy), not on the
      device.
    progress: a progress bar over the blocks.

  Returns:
    ``(pruned params, keep masks)`` like :func:`prune_kernels`.
  """
  _check_method(method, n_of_m)
  batches = [tuple(b) for b in batches]
  token_masks = capture_lib.checked_token_masks(batches, token_masks)
  gram = method == "sparsegpt"
  layout = jax.eval_shape(lambda p: capture_lib.input_moments(fn, p, *batches[0]), params)
  units = blocks(layout, _planned(s, layout, dense_io, params, n_of_m))
  if isinstance(sparsity, Mapping):
    unknown = sorted(set(sparsity) - set(units))
    missing = sorted(set(units) - set(sparsity))
    if unknown or missing:
      raise ValueError(f"Per-block sparsities name unknown blocks {unknown} and miss {missing}; "
                       f"the blocks: {list(units)}.")
  key = tuple((n, tuple(m)) for n, m in units.items())
  segs = [_segments(fn, params, b, key) for b in batches]  # one per batch shape
  cut = all(seg is not None for seg in segs)
  if cut:
    lives = [seg.start(b, host=host) for seg, b in zip(segs, batches)]

  def block_moments(i, current):
    if not cut:  # the whole model, re-run on the calibration batches
      return capture_lib.batch_moments(fn, current, batches, gram=gram, token_masks=token_masks)
    return capture_lib.sum_moments(
        seg.run(i, current, live, gram=gram, token_mask=mask, ends=False)[1]
        for seg, live, mask in zip(segs, lives, token_masks))

  current = params
  masks: dict[str, jax.Array] = {}
  moments = None
  for i, (name, members) in enumerate(tqdm(list(units.items()), desc="blocks",
                                           disable=not progress)):
    block_sparsity = sparsity[name] if isinstance(sparsity, Mapping) else sparsity
    if method != "magnitude":
      moments = block_moments(i, current)
    updated = _prune_block(tree_utils.leaves_by_path(current), masks, members, moments or layout,
                           method, block_sparsity, n_of_m, blocksize, damp)
    current = tree_utils.map_with_path(
        lambda p, w: updated[p].astype(w.dtype) if p in updated else w, current)
    if cut and method != "magnitude" and i + 1 < len(units):
      lives = [seg.run(i, current, live, capture=False, host=host)[0]
               for seg, live in zip(segs, lives)]
  keep = tree_utils.map_with_path(lambda p, w: masks.get(p, jnp.ones((), jnp.bool_)), current)
  return current, keep


def _prune_block(leaves, masks, members, moments, method, sparsity, n_of_m, blocksize, damp):
  """``{path: new kernel}`` of one block's kernels (``masks`` updated in place)."""
  updated = {}
  for path, layer in members:
    stats = _stats(moments, path, method) if method != "magnitude" else {}
    w = updated.get(path, leaves[path])
    if layer is None:
      new, keep = _prune_leaf(w, moments.axes[path], stats, False, method, sparsity, n_of_m,
                              blocksize, damp)
    else:  # one layer of a stacked kernel, with that layer's statistics
      axes = [a - (a > moments.axes[path][0]) for a in moments.axes[path][1:]]
      stacked_axis = moments.axes[path][0]
      if np.ndim(moments.count[path]):  # every layer's (else one scan iteration's alone)
        stats = jax.tree.map(lambda v: v[layer], stats)
      new_l, keep_l = _prune_leaf(jnp.take(w, layer, stacked_axis), axes, stats, False, method,
                                  sparsity, n_of_m, blocksize, damp)
      index = (slice(None),) * stacked_axis + (layer,)
      new = w.at[index].set(new_l.astype(w.dtype))
      keep = masks.get(path, jnp.ones(np.shape(w), jnp.bool_)).at[index].set(keep_l)
    updated[path], masks[path] = new, keep
  return updated


_SEGMENTS: dict[Any, segments_lib.Segments | None] = {}
_SEGMENTS_KEPT = 8


def _segments(fn, params, batch, units) -> segments_lib.Segments | None:
  """The model's jaxpr cut at its blocks (``None`` where they cannot be cut apart), kept for
  the next call with the same function, shapes and blocks (the last few)."""
  avals = tracing.abstract((params, batch))
  try:
    key = (fn, jax.tree.structure(avals), tuple(jax.tree.leaves(avals)), units)
    hash(key)
  except TypeError:
    key = None
  if key is not None and key in _SEGMENTS:
    return _SEGMENTS[key]
  t = tracing.trace(fn, *avals[:1], *avals[1])
  seg = segments_lib.cut(t, [members for _, members in units])
  if key is not None:
    if len(_SEGMENTS) >= _SEGMENTS_KEPT:
      _SEGMENTS.pop(next(iter(_SEGMENTS)))
    _SEGMENTS[key] = seg
  return seg

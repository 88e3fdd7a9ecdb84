"""Calibration statistics from the computation: the inputs of every kernel, without taps.

:func:`input_moments` runs the user's own function (re-evaluating its traced jaxpr) and, at
every ``dot_general`` that contracts a parameter leaf with an activation (Dense, DenseGeneral,
Einsum, attention projections, a tied unembedding), accumulates the activation's squared values
over all its other axes (tokens, batch): ``sq[j] = sum_rows x[row, j]^2`` laid out along the
kernel's own contraction axes, the plain sums alike, and ``count``, the rows summed; with ``gram=True`` also the
Gram matrix ``x^T x`` of the activation flattened over those axes (``(C, C)``, ``C`` their
product in the leaf's axis order), SparseGPT's Hessian. A kernel a ``scan`` iterates
(``nn.scan`` stacks) gets one moment per layer. A leaf consumed at several places sums them.
Convolutions and products inside ``cond`` / ``while`` bodies are not captured: such kernels
are named in :attr:`Moments.missing`.

:func:`wanda` turns the moments into Wanda's importance ``|W| * sqrt(E[x_j^2])``, broadcast
along each kernel's output axes, for any granularity and selector.

Reference: Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
Models" (Wanda).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import structure
  >>> params = {"w": jnp.ones((2, 3))}
  >>> m = structure.input_moments(lambda p, x: x @ p["w"], params, jnp.array([[1.0, 2.0], [3.0, 0.0]]))
  >>> m.sq["w"].tolist(), int(m.count["w"])
  ([10.0, 4.0], 2)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.scores import activations
from impjax.structure import compaction
from impjax.structure import tracing


@struct.dataclass
class Moments:
  """Input moments of every captured kernel (see :func:`input_moments`); a pytree of the
  sums, so it passes through ``jit`` and adds up with ``jax.tree.map``.

  Attributes:
    sq: ``{path: sum of squared inputs}``, shaped like the kernel's contraction axes in
      ascending order (with a leading layer axis for a stacked kernel).
    count: ``{path: rows summed}`` (per layer for a stacked kernel).
    leaf_axes: ``((path, the leaf axes of sq), ...)`` (the layer axis first when stacked);
      :attr:`axes` as a dict.
    missing: kernels consumed by a ``dot_general`` or convolution whose inputs were not
      captured (a convolution, a product inside ``cond`` / ``while``, a batched product).
    gram: ``{path: sum of x^T x}`` ``(C, C)`` (per layer when stacked), when asked for.
    sums: ``{path: sum of the inputs}``, laid out like ``sq`` (DSnoT's input means).
  """
  sq: dict[str, jax.Array]
  count: dict[str, jax.Array]
  leaf_axes: tuple[tuple[str, tuple[int, ...]], ...] = struct.field(pytree_node=False)
  missing: tuple[str, ...] = struct.field(pytree_node=False)
  gram: dict[str, jax.Array] = struct.field(default_factory=dict)
  sums: dict[str, jax.Array] = struct.field(default_factory=dict)

  @property
  def axes(self) -> dict[str, tuple[int, ...]]:
    """``{path: the leaf axes of sq}``."""
    return dict(self.leaf_axes)


class Capturing(compaction.Evaluator):
  """Re-evaluates a traced jaxpr, accumulating the inputs of parameter products (``capture``
  false: evaluates only)."""

  def __init__(self, t: tracing.Trace, leaf_shapes: dict[str, tuple[int, ...]], gram: bool,
               capture: bool = True):
    super().__init__(t, {})
    self.gram = gram
    self.token_mask = None  # set per run: (batch, tokens) weights of the rows, or None
    self.rows = None  # set per run: the rows the Gram matrices sum (gram_rows), or None
    self.sites = {u.site: u for u in t.uses if capture and u.kind == "dot"
                  and u.activation is not None and not u.batch}
    self.shapes = leaf_shapes
    self.stats: dict[str, tuple[jax.Array, jax.Array]] = {}
    self.inside_control_flow = 0  # products inside cond / while bodies are not captured

  def equation(self, ctx, k, eqn, args):
    use = self.sites.get((ctx, k))
    if use is not None and not self.inside_control_flow:
      self.record(use, args)
    if eqn.primitive.name in ("cond", "while"):
      self.inside_control_flow += 1
      try:
        return super().equation(ctx, k, eqn, args)
      finally:
        self.inside_control_flow -= 1
    return super().equation(ctx, k, eqn, args)

  def record(self, use: tracing.Use, args) -> None:
    position, act_dims = use.activation
    x = jnp.asarray(args[position], jnp.float32)
    others = tuple(d for d in range(x.ndim) if d not in act_dims)
    row_shape = [x.shape[d] for d in others]
    if self.token_mask is None:
      weight = jnp.ones(row_shape, jnp.float32)
    elif self.token_mask.size == math.prod(row_shape):
      weight = self.token_mask.reshape(row_shape)
    else:
      raise ValueError(f"token_mask of shape {self.token_mask.shape} does not cover the "
                       f"{row_shape} rows of the inputs of '{use.path}'.")
    wx = x * jnp.expand_dims(weight, [d for d in range(x.ndim) if d in act_dims]) if (
        self.token_mask is not None) else x
    leaf_axes = [a for axes in use.contraction_dims for a in axes]

    def in_leaf_layout(v):  # over the contracting dims, in ascending order -> the leaf's
      v = jnp.transpose(v, [sorted(act_dims).index(d) for d in act_dims])
      v = v.reshape([self.shapes[use.path][a] for a in leaf_axes])
      return jnp.transpose(v, np.argsort(leaf_axes))

    new = {"sq": in_leaf_layout(jnp.sum(wx * x, axis=others)),
           "sum": in_leaf_layout(jnp.sum(wx, axis=others)), "rows": jnp.sum(weight)}
    if self.gram:  # the contracted dims in the leaf's axis order, flattened: (rows, C)
      order = tuple(act_dims[i] for i in np.argsort(leaf_axes))
      flatten = lambda v: jnp.transpose(v, others + order).reshape(math.prod(row_shape), -1)
      if self.rows is None:
        new["gram"] = activations.symmetric_product(flatten(wx), flatten(x))
      else:  # the weighted rows alone (the others add zeros)
        rows = flatten(x)[self.rows]
        new["gram"] = activations.symmetric_product(rows * weight.reshape(-1, 1)[self.rows], rows)
    self._add(use.path, new)

  def reset(self, token_mask: Any, rows: Any = None) -> None:
    """Empties the sums before a run, with the run's row weights (or ``None``) and the rows
    the Gram matrices sum (:func:`gram_rows`, or ``None`` for all)."""
    self.stats = {}
    self.token_mask = None if token_mask is None else jnp.asarray(token_mask, jnp.float32)
    self.rows = rows

  def _add(self, path: str, new: dict) -> None:
    old = self.stats.get(path)
    self.stats[path] = new if old is None else jax.tree.map(jnp.add, old, new)

  def scan(self, ctx, k, p, args):
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = args[:nc], args[nc:nc + nk], args[nc + nk:]

    def body(carry, x):
      outer, self.stats = self.stats, {}
      outs = self.call(ctx, k, 0, p["jaxpr"], list(consts) + list(carry) + list(x))
      inner, self.stats = self.stats, outer
      return tuple(outs[:nk]), (tuple(outs[nk:]), inner)

    carry, (ys, inner) = lax.scan(body, tuple(init), tuple(xs), length=p["length"],
                                  reverse=p["reverse"], unroll=p["unroll"])
    stacked = {u.path for u in self.t.uses if u.layer}
    for path, new in inner.items():
      if path not in stacked:  # a leaf the scan closes over: every iteration adds up
        new = jax.tree.map(lambda v: v.sum(0), new)
      self._add(path, new)
    return list(carry) + list(ys)


_ROW_BUCKET = 128


def gram_rows(token_mask: Any) -> np.ndarray | None:
  """The rows of a concrete ``token_mask`` (flattened) that the Gram matrices need: those of
  nonzero weight, padded to a multiple of 128 with a zero-weight row (so batches alike share a
  compiled program); ``None`` where that leaves out less than an eighth of the rows, or the
  mask is traced or absent.

  Example:
    >>> gram_rows(np.array([[1, 1, 0, 0]] * 64)).shape  # 128 of 256 rows
    (128,)
  """
  if token_mask is None or isinstance(token_mask, jax.core.Tracer):
    return None
  flat = np.asarray(token_mask).reshape(-1)
  real = np.flatnonzero(flat)
  size = -(-len(real) // _ROW_BUCKET) * _ROW_BUCKET
  if size > flat.size * 7 // 8:
    return None
  padding = np.full(size - len(real), np.flatnonzero(flat == 0)[0])
  return np.concatenate([real, padding]).astype(np.int32)


def input_moments(fn: Callable[..., Any], params: tree_utils.Params, *inputs: Any,
                  gram: bool = False, token_mask: Any = None) -> Moments:
  """The squared-input sums (and with ``gram`` the Gram matrices) of every kernel of
  ``fn(params, *inputs)`` on these inputs.

  Works under ``jit`` (the function is traced once per input shape); sum the moments of
  several calibration batches (they are sums), and ``lax.psum`` them over a data-parallel axis
  (under ``pmap``, or ``shard_map(..., check_vma=False)``: the re-evaluated computation mixes
  the trace's replicated constants with the sharded batch).

  Args:
    fn: the model, ``fn(params, *inputs)`` (a Linen ``apply``, an NNX call, plain JAX).
    params: its params.
    *inputs: one calibration batch.
    gram: also sum ``x^T x`` over the kernel's flattened contraction axes.
    token_mask: weights of the rows (e.g. an attention mask ``(batch, tokens)``, nonzero for
      real tokens): every kernel's input rows are weighted by it, and ``count`` sums it; its
      axes must lead each input's row axes, in order (``ValueError`` naming the kernel where
      its size does not match). A concrete mask's zero-weight rows are left out of the Gram
      matrices' products (:func:`gram_rows`).

  Returns:
    The :class:`Moments`.
  """
  t = tracing.trace(fn, tracing.abstract(params), *tracing.abstract(inputs))
  leaf_shapes = {path: tuple(np.shape(x)) for path, x in tree_utils.leaves_by_path(params).items()}
  capturing = Capturing(t, leaf_shapes, gram)

  @jax.jit
  def run(flat, token_mask, rows):  # one compiled program, also when called eagerly
    capturing.reset(token_mask, rows)
    capturing.run(t.jaxpr.jaxpr, (), flat, t.jaxpr.consts)
    return capturing.stats

  rows = gram_rows(token_mask) if gram else None
  return to_moments(t, run(jax.tree.leaves(params) + jax.tree.leaves(inputs), token_mask, rows))


def to_moments(t: tracing.Trace, stats: dict[str, dict[str, jax.Array]]) -> Moments:
  """The :class:`Moments` of a :class:`Capturing` run's sums over the trace ``t``."""
  layer = {u.path: u.layer[0] for u in t.uses if u.layer}
  axes = {}
  for u in t.uses:
    if u.path in stats:
      contraction = tuple(sorted(a for dims in u.contraction_dims for a in dims))
      axes[u.path] = ((layer[u.path],) if u.path in layer else ()) + contraction
  consumed = {u.path for u in t.uses if u.kind in ("dot", "conv") and u.contraction}
  return Moments({p: v["sq"] for p, v in stats.items()}, {p: v["rows"] for p, v in stats.items()},
                 tuple(sorted(axes.items())), tuple(sorted(consumed - set(stats))),
                 {p: v["gram"] for p, v in stats.items() if "gram" in v},
                 {p: v["sum"] for p, v in stats.items()})


def batch_moments(fn: Callable[..., Any], params: tree_utils.Params, batches: Sequence[tuple],
                  *, gram: bool = False, token_masks: Sequence[Any] | None = None) -> Moments:
  """:func:`input_moments` summed over calibration ``batches`` (tuples of ``fn``'s inputs),
  ``token_masks`` giving each batch's row weights (or ``None``).

  Example:
    >>> import jax.numpy as jnp
    >>> params = {"w": jnp.ones((2, 3))}
    >>> x = jnp.array([[1.0, 2.0], [3.0, 0.0]])
    >>> m = batch_moments(lambda p, x: x @ p["w"], params, [(x[:1],), (x[1:],)])
    >>> m.sq["w"].tolist(), int(m.count["w"])
    ([10.0, 4.0], 2)
  """
  token_masks = checked_token_masks(batches, token_masks)
  return sum_moments(input_moments(fn, params, *batch, gram=gram, token_mask=mask)
                     for batch, mask in zip(batches, token_masks))


def checked_token_masks(batches: Sequence[tuple], token_masks: Sequence[Any] | None) -> list:
  """One row-weight entry per calibration batch (``None`` for all when not given);
  ``ValueError`` for no batches or a count that differs."""
  if not batches:
    raise ValueError("Got no calibration batches.")
  token_masks = [None] * len(batches) if token_masks is None else list(token_masks)
  if len(token_masks) != len(batches):
    raise ValueError(f"token_masks has {len(token_masks)} entries for {len(batches)} batches.")
  return token_masks


def sum_moments(moments: Iterable[Moments]) -> Moments:
  """The sum of several batches' :class:`Moments` (of the same kernels)."""
  total = None
  for m in moments:
    total = m if total is None else jax.tree.map(jnp.add, total, m)
  return total


def wanda(params: tree_utils.Params, moments: Moments) -> tree_utils.Importance:
  """Wanda's ``|W| * sqrt(E[x_j^2])`` for every captured kernel, ``|W|`` elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, 1.0]])}
    >>> x = jnp.array([[2.0, 1.0], [2.0, 0.0]])
    >>> m = structure.input_moments(lambda p, x: x @ p["w"], params, x)
    >>> structure.wanda(params, m)["w"].tolist()  # rows scaled by sqrt(8 / 2) and sqrt(1 / 2)
    [[2.0, 4.0], [2.1213202476501465, 0.7071067690849304]]
  """
  def leaf(path, w):
    score = jnp.abs(w).astype(jnp.float32)
    if path not in moments.sq:
      return score
    axes = dict(moments.leaf_axes)[path]
    count = moments.count[path]
    sq = moments.sq[path]
    if count.ndim:  # one count per layer of a stacked kernel
      count = count.reshape((-1,) + (1,) * (sq.ndim - 1))
    norm = jnp.sqrt(sq / jnp.maximum(count, 1.0))
    shape = [1] * np.ndim(w)
    for a, n in zip(axes, np.shape(norm)):
      shape[a] = n
    return score * norm.reshape(shape)
  return tree_utils.map_with_path(leaf, params)

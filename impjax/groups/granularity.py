"""Granularities: how one leaf's element scores become group scores, and group masks elements.

A :class:`Granularity` is a static description (a plain, hashable leaf in pytrees). ``reduce``
maps a leaf's element scores to a flat vector of group scores; ``expand`` maps a flat group mask
back to a mask broadcastable to the leaf. Dense leaves reduce to an empty vector (nothing to
select) and expand to a scalar ``True``.

Reference: Torch-Pruning (Fang et al. 2023, "DepGraph") group reductions; Zhou et al. 2021,
"Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch".

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups
  >>> g = groups.neurons(axis=-1)
  >>> groups.reduce_leaf(jnp.array([[1.0, 2.0], [3.0, 4.0]]), g, "sum").tolist()
  [4.0, 6.0]
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

REDUCTIONS = ("sum", "mean", "max", "l2")


@dataclasses.dataclass(frozen=True)
class Granularity:
  """Static description of a leaf's pruning unit.

  Attributes:
    kind: ``dense``, ``element``, ``neurons``, ``blocks``, ``leaf`` or ``n_of_m``.
    axis: the unit axis of ``neurons``; the contraction axis of ``n_of_m``.
    block: block shape of ``blocks``.
    n: kept per group of ``n_of_m``.
    m: group size of ``n_of_m``.
    layer_axis: the layer axis of a stacked (scanned) leaf, or ``None``: each layer's slice
      is then its own set of units (groups are ordered layer by layer, and selection gives
      every layer its own floor and, with a local scope, its own budget).
  """
  kind: str
  axis: int = -1
  block: tuple[int, ...] = ()
  n: int = 0
  m: int = 0
  layer_axis: int | None = None


DENSE = Granularity("dense")


def element() -> Granularity:
  """Every weight is its own unit."""
  return Granularity("element")


def neurons(axis: int = -1) -> Granularity:
  """One unit per index of ``axis`` (``-1``: output neurons/channels of a Flax kernel)."""
  return Granularity("neurons", axis=axis)


def blocks(shape: tuple[int, ...]) -> Granularity:
  """Units are contiguous blocks of ``shape`` (same rank as the leaf, must divide it)."""
  if not shape or any(b < 1 for b in shape):
    raise ValueError(f"block shape must be positive integers, got {shape}.")
  return Granularity("blocks", block=tuple(shape))


def leaf() -> Granularity:
  """The whole leaf is one unit."""
  return Granularity("leaf")


def n_of_m(n: int, m: int, axis: int = 0) -> Granularity:
  """Keep exactly ``n`` of every ``m`` consecutive weights along ``axis`` (0: Flax inputs)."""
  if not 0 < n <= m:
    raise ValueError(f"N:M needs 0 < n <= m, got n={n}, m={m}.")
  return Granularity("n_of_m", axis=axis, n=n, m=m)


def per_layer(g: Granularity, layer_axis: int = 0) -> Granularity:
  """``g`` applied to each layer of a stacked leaf separately (``layer_axis``: its layer axis;
  ``axis`` and ``block`` still refer to the whole leaf).

  Example:
    >>> from impjax import groups
    >>> s = jnp.arange(12.0).reshape(2, 3, 2)  # (layers, in, out)
    >>> groups.reduce_leaf(s, groups.per_layer(groups.neurons(-1))).tolist()
    [6.0, 9.0, 24.0, 27.0]
  """
  return dataclasses.replace(g, layer_axis=layer_axis)


def _slice_granularity(g: Granularity, ndim: int) -> tuple[int, Granularity]:
  """The layer axis (non-negative) and the granularity of one layer's slice."""
  lax_ = g.layer_axis % ndim
  axis = g.axis % ndim
  block = g.block[:lax_] + g.block[lax_ + 1:] if g.block else ()
  return lax_, dataclasses.replace(g, axis=axis - (axis > lax_), block=block, layer_axis=None)


def reduce_over(x: jnp.ndarray, axes: tuple[int, ...], how: str) -> jnp.ndarray:
  """Reduces ``x`` over ``axes`` by ``how`` (sum, mean, max or l2)."""
  if how == "sum":
    return jnp.sum(x, axis=axes)
  if how == "mean":
    return jnp.mean(x, axis=axes)
  if how == "max":
    return jnp.max(x, axis=axes)
  if how == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes))
  raise ValueError(f"Unknown reduction '{how}'. Known: {REDUCTIONS}.")


def check_leaf(shape: tuple[int, ...], g: Granularity, path: str) -> None:
  """Raises ``ValueError`` naming ``path`` when ``g`` cannot apply to a leaf of ``shape``."""
  if g.kind != "dense" and 0 in shape:
    raise ValueError(f"Leaf '{path}' of shape {shape} is empty; it has no units to prune as "
                     f"{g.kind}. Plan it dense.")
  if g.kind in ("neurons", "n_of_m") and not -len(shape) <= g.axis < len(shape):
    raise ValueError(f"Leaf '{path}' of shape {shape} has no axis {g.axis} for {g.kind}.")
  if g.kind == "n_of_m" and shape[g.axis] % g.m:
    raise ValueError(f"N:M {g.n}:{g.m} needs axis {g.axis} of leaf '{path}' to be divisible by "
                     f"{g.m}, but it has size {shape[g.axis]}.")
  if g.kind == "blocks" and (len(g.block) != len(shape)
                             or any(s % b for s, b in zip(shape, g.block))):
    raise ValueError(f"Block shape {g.block} does not tile leaf '{path}' of shape {shape}.")
  if g.layer_axis is not None and g.kind != "dense":
    if not -len(shape) <= g.layer_axis < len(shape):
      raise ValueError(f"Leaf '{path}' of shape {shape} has no layer axis {g.layer_axis}.")
    lax_ = g.layer_axis % len(shape)
    if g.kind in ("neurons", "n_of_m") and g.axis % len(shape) == lax_:
      raise ValueError(f"Leaf '{path}': the {g.kind} axis {g.axis} is its layer axis "
                       f"{g.layer_axis}; units lie within a layer.")
    if g.kind == "blocks" and g.block[lax_] != 1:
      raise ValueError(f"Leaf '{path}': blocks {g.block} span layers along its layer axis "
                       f"{g.layer_axis}; give that axis block size 1.")


def reduce_leaf(score: jnp.ndarray, g: Granularity, how: str = "sum") -> jnp.ndarray:
  """Flat group scores of one leaf (empty for dense leaves; layer by layer for a stacked one)."""
  if g.kind == "dense":
    return jnp.zeros((0,), jnp.float32)
  if g.layer_axis is not None:
    lax_, inner = _slice_granularity(g, score.ndim)
    return jax.vmap(lambda x: reduce_leaf(x, inner, how), in_axes=lax_)(score).reshape(-1)
  if g.kind in ("element", "n_of_m"):
    return score.reshape(-1)
  if g.kind == "leaf":
    return reduce_over(score.reshape(-1), (0,), how).reshape(1)
  if g.kind == "neurons":
    ax = g.axis % score.ndim
    return reduce_over(score, tuple(i for i in range(score.ndim) if i != ax), how)
  if g.kind == "blocks":
    split = []
    for size, b in zip(score.shape, g.block):
      split += [size // b, b]
    blocked = score.reshape(split)
    return reduce_over(blocked, tuple(range(1, 2 * score.ndim, 2)), how).reshape(-1)
  raise ValueError(f"Unknown granularity kind '{g.kind}'.")


def expand_leaf(group_mask: jnp.ndarray, g: Granularity, shape: tuple[int, ...]) -> jnp.ndarray:
  """Element mask (broadcastable to ``shape``) from a flat group mask."""
  if g.kind == "dense":
    return jnp.ones((), jnp.bool_)
  if g.layer_axis is not None:
    lax_, inner = _slice_granularity(g, len(shape))
    rest = shape[:lax_] + shape[lax_ + 1:]
    rows = group_mask.reshape(shape[lax_], -1)
    full = jax.vmap(lambda m: jnp.broadcast_to(expand_leaf(m, inner, rest), rest))(rows)
    return jnp.moveaxis(full, 0, lax_)
  if g.kind in ("element", "n_of_m"):
    return group_mask.reshape(shape)
  if g.kind == "leaf":
    return group_mask.reshape(())
  if g.kind == "neurons":
    ax = g.axis % len(shape)
    view = [1] * len(shape)
    view[ax] = shape[ax]
    return jnp.broadcast_to(group_mask.reshape(view), shape)
  if g.kind == "blocks":
    grid = [s // b for s, b in zip(shape, g.block)]
    m = group_mask.reshape(grid)
    for ax, b in enumerate(g.block):
      m = jnp.repeat(m, b, axis=ax)
    return m
  raise ValueError(f"Unknown granularity kind '{g.kind}'.")


def num_groups(shape: tuple[int, ...], g: Granularity) -> int:
  """How many units a leaf of ``shape`` has under ``g``."""
  if g.kind == "dense":
    return 0
  if g.layer_axis is not None:
    lax_, inner = _slice_granularity(g, len(shape))
    return shape[lax_] * num_groups(shape[:lax_] + shape[lax_ + 1:], inner)
  if g.kind in ("element", "n_of_m"):
    return math.prod(shape)
  if g.kind == "leaf":
    return 1
  if g.kind == "neurons":
    return shape[g.axis]
  return math.prod(s // b for s, b in zip(shape, g.block))

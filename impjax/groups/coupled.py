"""Coupled groups: the leaves and axes that one structural unit spans, pruned together.

A :class:`Coupled` group names the leaves that one unit spans and the axis it occupies in each:
an MLP hidden unit is a column of ``W_in``, its bias entry and a row of ``W_out``; an attention
head is ``head_dim`` columns of the query, key and value kernels and ``head_dim`` rows of the
output kernel. :func:`coupled_scores` reduces element importances to one score per unit and
:func:`coupled_masks` expands kept units back to element masks.

Reference: Fang et al. 2023, "DepGraph: Towards Any Structural Pruning" (coupled groups).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups
  >>> params = {"fc1": {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.zeros(2)},
  ...           "fc2": {"kernel": jnp.array([[3.0], [0.5]])}}
  >>> mlp = groups.Coupled((("fc1/kernel", 1), ("fc1/bias", 0), ("fc2/kernel", 0)))
  >>> groups.coupled_scores(params, mlp).tolist()  # |w| summed over each unit's entries
  [4.0, 2.5]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.groups import granularity


class Member(NamedTuple):
  """One leaf axis of a coupled group.

  The axis is viewed row-major as ``(outer, units, inner)``: unit ``u`` owns ``inner``
  consecutive entries, repeated ``outer`` times (a query-head axis ``(kv_heads, groups)``
  grouped by kv head has ``inner=groups``; by group, ``outer=kv_heads``).

  Attributes:
    path: the leaf's path.
    axis: the leaf axis the units occupy.
    inner: consecutive entries per unit.
    outer: repeats of the unit pattern along the axis.
    layer: the leaf's layer axis when it is a stack of layers (one set of units per layer),
      else ``None``.
  """
  path: str
  axis: int
  inner: int = 1
  outer: int = 1
  layer: int | None = None


class Coupled(NamedTuple):
  """Leaves sliced together by one set of units.

  Attributes:
    members: :class:`Member` s, or ``(leaf path, axis)`` pairs whose units are ``size``
      consecutive entries.
    size: consecutive entries per unit of the ``(path, axis)`` pair members (``head_dim`` for
      heads).

  Example:
    >>> Coupled((("fc1/kernel", 1), ("fc2/kernel", 0))).size
    1
  """
  members: tuple[Member | tuple[str, int], ...]
  size: int = 1


def members(group: Coupled) -> tuple[Member, ...]:
  """``group``'s members as :class:`Member` s.

  Example:
    >>> members(Coupled((("q", 1),), size=4))
    (Member(path='q', axis=1, inner=4, outer=1, layer=None),)
  """
  return tuple(m if isinstance(m, Member) else Member(m[0], m[1], inner=group.size)
               for m in group.members)


def is_stacked(group: Coupled) -> bool:
  """Whether every member is a layer stack (units per layer, keep vectors ``(layers, units)``)."""
  return all(m.layer is not None for m in members(group))


def keep_shape(leaves: dict[str, Any], group: Coupled) -> tuple[int, ...]:
  """Shape of ``group``'s keep vector, ``(units,)`` or ``(layers, units)``, checking every
  member against ``leaves`` (``{path: leaf}``); ``ValueError`` naming a missing or disagreeing
  member.

  Example:
    >>> keep_shape({"a": jnp.ones((2, 4)), "b": jnp.ones((4, 3))}, Coupled((("a", 1), ("b", 0))))
    (4,)
  """
  shapes = set()
  stacked = is_stacked(group)
  for m in members(group):
    if m.path not in leaves:
      raise ValueError(f"Coupled group member '{m.path}' is not a leaf of the tree.")
    shape = np.shape(leaves[m.path])
    size = shape[m.axis]
    if size % (m.inner * m.outer):
      raise ValueError(f"Coupled group member '{m.path}' axis {m.axis} of size {size} is not "
                       f"a multiple of inner {m.inner} x outer {m.outer}.")
    units = (size // (m.inner * m.outer),)
    shapes.add((shape[m.layer],) + units if stacked else units)
  if len(shapes) != 1:
    raise ValueError(f"Coupled group members {[m.path for m in members(group)]} disagree on "
                     f"their unit counts: {sorted(shapes)}.")
  return shapes.pop()


def num_entries(leaves: dict[str, Any], group: Coupled) -> int:
  """Units of ``group`` times its ``size`` (entries of the shared axis of pair members).

  Example:
    >>> num_entries({"a": jnp.ones((2, 4)), "b": jnp.ones((4, 3))}, Coupled((("a", 1), ("b", 0))))
    4
  """
  return keep_shape(leaves, group)[-1] * group.size


def _unit_axes(x_ndim: int, m: Member, stacked: bool) -> list[int]:
  return ([m.layer % x_ndim] if stacked else []) + [m.axis % x_ndim]


def coupled_scores(importance: tree_utils.Importance, group: Coupled,
                   how: str = "sum") -> jax.Array:
  """One score per unit (per layer of a stacked group): each member's element importance
  reduced along its other axes (``how``: sum, mean, max, l2), summed over members and over a
  unit's entries.

  Example:
    >>> g = Coupled((("a", 1), ("b", 0)), size=2)
    >>> coupled_scores({"a": jnp.ones((2, 4)), "b": jnp.ones((4, 3))}, g).tolist()
    [10.0, 10.0]
  """
  leaves = tree_utils.leaves_by_path(importance)
  shape = keep_shape(leaves, group)
  stacked = is_stacked(group)
  total = jnp.zeros(shape, jnp.float32)
  for m in members(group):
    x = jnp.asarray(leaves[m.path], jnp.float32)
    keep = _unit_axes(x.ndim, m, stacked)
    y = granularity.reduce_over(jnp.moveaxis(x, keep, range(len(keep))),
                                tuple(range(len(keep), x.ndim)), how)
    y = y.reshape(y.shape[:-1] + (m.outer, shape[-1], m.inner))
    total = total + y.sum(axis=(-3, -1))
  return total


def member_mask(keep: Any, m: Member, shape: tuple[int, ...], stacked: bool) -> jax.Array:
  """Bool mask broadcastable to a leaf of ``shape`` from a group keep vector."""
  return member_values(jnp.asarray(keep, jnp.bool_), m, shape, stacked)


def member_values(keep: jax.Array, m: Member, shape: tuple[int, ...], stacked: bool) -> jax.Array:
  """Per-unit values (``(units,)`` or ``(layers, units)``, any dtype) spread over a member's
  entries: an array broadcastable to a leaf of ``shape``."""
  units = keep.shape[-1]
  entries = jnp.broadcast_to(keep[..., None, :, None], keep.shape[:-1] + (m.outer, units,
                                                                          m.inner))
  entries = entries.reshape(keep.shape[:-1] + (-1,))
  axes = _unit_axes(len(shape), m, stacked)
  view = [1] * len(shape)
  for a in axes:
    view[a] = shape[a]
  order = sorted(range(len(axes)), key=lambda i: axes[i])
  entries = jnp.transpose(entries, order) if len(axes) > 1 else entries
  return jnp.broadcast_to(entries.reshape(view), shape)


def coupled_masks(params: tree_utils.Params, coupled: dict[str, Coupled], keep: dict[str,
                  Any]) -> tree_utils.Masks:
  """Element keep-masks like ``params`` from per-unit keep vectors (``True`` elsewhere; a
  leaf in several groups keeps what all of them keep).

  Example:
    >>> g = {"mlp": Coupled((("a", 1), ("b", 0)))}
    >>> m = coupled_masks({"a": jnp.ones((1, 2)), "b": jnp.ones((2, 1))}, g,
    ...                {"mlp": jnp.array([True, False])})
    >>> m["a"].tolist(), m["b"].tolist()
    ([[True, False]], [[True], [False]])
  """
  leaves = tree_utils.leaves_by_path(params)
  by_path: dict[str, jax.Array] = {}
  for name, group in coupled.items():
    if name not in keep:
      continue
    shape = keep_shape(leaves, group)
    if np.shape(keep[name]) != shape:
      raise ValueError(f"keep['{name}'] must have shape {shape}, got {np.shape(keep[name])}.")
    for m in members(group):
      mask = member_mask(keep[name], m, np.shape(leaves[m.path]), is_stacked(group))
      by_path[m.path] = mask & by_path[m.path] if m.path in by_path else mask
  return tree_utils.map_with_path(lambda p, x: by_path.get(p, jnp.ones((), jnp.bool_)), params)

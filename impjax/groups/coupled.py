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


class Coupled(NamedTuple):
  """Leaves sliced together by one set of units.

  Attributes:
    members: ``(leaf path, axis)`` pairs; each axis has ``units * size`` entries.
    size: consecutive entries per unit along every member axis (``head_dim`` for heads).

  Example:
    >>> Coupled((("fc1/kernel", 1), ("fc2/kernel", 0))).size
    1
  """
  members: tuple[tuple[str, int], ...]
  size: int = 1


def num_entries(leaves: dict[str, Any], group: Coupled) -> int:
  """Entries of ``group``'s shared axis (``units * size``), checking every member against
  ``leaves`` (``{path: leaf}``); ``ValueError`` naming a missing or disagreeing member.

  Example:
    >>> num_entries({"a": jnp.ones((2, 4)), "b": jnp.ones((4, 3))}, Coupled((("a", 1), ("b", 0))))
    4
  """
  sizes = set()
  for path, axis in group.members:
    if path not in leaves:
      raise ValueError(f"Coupled group member '{path}' is not a leaf of the tree.")
    sizes.add(np.shape(leaves[path])[axis])
  if len(sizes) != 1 or sizes.pop() % group.size:
    raise ValueError(f"Coupled group members {[p for p, _ in group.members]} disagree on their "
                     f"unit axis sizes or are not multiples of size {group.size}.")
  return np.shape(leaves[group.members[0][0]])[group.members[0][1]]


def coupled_scores(importance: tree_utils.Importance, group: Coupled,
                   how: str = "sum") -> jax.Array:
  """One score per unit: each member's element importance reduced along the other axes
  (``how``: sum, mean, max, l2), summed over members and over a unit's ``size`` entries.

  Example:
    >>> g = Coupled((("a", 1), ("b", 0)), size=2)
    >>> coupled_scores({"a": jnp.ones((2, 4)), "b": jnp.ones((4, 3))}, g).tolist()
    [10.0, 10.0]
  """
  leaves = tree_utils.leaves_by_path(importance)
  num_entries(leaves, group)
  total = sum(granularity.reduce_leaf(leaves[p], granularity.neurons(axis), how)
              for p, axis in group.members)
  return total.reshape(-1, group.size).sum(-1)


def coupled_masks(params: tree_utils.Params, coupled: dict[str, Coupled], keep: dict[str,
                  Any]) -> tree_utils.Masks:
  """Element keep-masks like ``params`` from per-unit keep vectors (``True`` elsewhere).

  Example:
    >>> g = {"mlp": Coupled((("a", 1), ("b", 0)))}
    >>> m = coupled_masks({"a": jnp.ones((1, 2)), "b": jnp.ones((2, 1))}, g,
    ...                {"mlp": jnp.array([True, False])})
    >>> m["a"].tolist(), m["b"].tolist()
    ([[True, False]], [[True], [False]])
  """
  leaves = tree_utils.leaves_by_path(params)
  by_path = {}
  for name, group in coupled.items():
    units = num_entries(leaves, group) // group.size
    if np.shape(keep[name]) != (units,):
      raise ValueError(f"keep['{name}'] must have shape ({units},), got {np.shape(keep[name])}.")
    entries = jnp.repeat(jnp.asarray(keep[name], jnp.bool_), group.size)
    for path, axis in group.members:
      by_path[path] = granularity.expand_leaf(entries, granularity.neurons(axis),
                                              np.shape(leaves[path]))
  return tree_utils.map_with_path(lambda p, x: by_path.get(p, jnp.ones((), jnp.bool_)), params)

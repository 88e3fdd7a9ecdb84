"""Compaction: slice pruned units and heads out of the arrays — a really smaller model.

Given :class:`impjax.groups.Coupled` groups and per-unit keep vectors, every member leaf
keeps only the entries of kept units along its unit axis. Pruned units contribute exactly
zero in the masked model (their input columns, biases and output rows are zero), so the
compacted model computes the same function with fewer parameters and FLOPs. Shapes depend on
the masks, so compaction runs eagerly (not under ``jit``).

Reference: Fang et al. 2023, "DepGraph" (physically removing coupled groups); Michel et al.
2019 (removing heads); Adaptive MLP Pruning (a smaller, faster MLP).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, pruning
  >>> params = {"fc1": {"kernel": jnp.ones((3, 4))}, "fc2": {"kernel": jnp.ones((4, 2))}}
  >>> g = {"mlp": groups.Coupled((("fc1/kernel", 1), ("fc2/kernel", 0)))}
  >>> small = pruning.compact(params, g, {"mlp": jnp.array([True, False, True, False])})
  >>> small["fc1"]["kernel"].shape, small["fc2"]["kernel"].shape
  ((3, 2), (2, 2))
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax import groups


def compact(params: tree_utils.Params, coupled: dict[str, groups.Coupled], keep: dict[str,
            Any]) -> Any:
  """``params`` with the entries of dropped units removed from every member leaf.

  Example:
    >>> g = {"heads": groups.Coupled((("q", 1),), size=2)}
    >>> compact({"q": jnp.arange(8.0).reshape(2, 4)}, g, {"heads": np.array([False, True])})["q"].tolist()
    [[2.0, 3.0], [6.0, 7.0]]
  """
  groups.coupled_masks(params, coupled, keep)  # validates members and keep shapes
  slices: dict[str, list] = {}
  for name, group in coupled.items():
    if name not in keep:
      continue
    stacked = groups.is_stacked(group)
    for m in groups.members(group):
      slices.setdefault(m.path, []).append((member_index(keep[name], m), m, stacked))

  def leaf(path, x):
    x = jnp.asarray(x)
    for index, m, stacked in slices.get(path, ()):
      if stacked:
        layer, axis = m.layer % x.ndim, m.axis % x.ndim
        view = [1] * x.ndim
        view[layer], view[axis] = index.shape
        if layer > axis:
          index = index.T
        x = jnp.take_along_axis(x, jnp.asarray(index).reshape(view), axis=axis)
      else:
        x = jnp.take(x, index, axis=m.axis)
    return x
  return tree_utils.map_with_path(leaf, params)


def member_index(keep: Any, m: groups.Member) -> np.ndarray:
  """Kept entry indices along ``m``'s axis (per layer for a ``(layers, units)`` keep, which
  must keep one count in every layer).

  Example:
    >>> member_index(np.array([True, False]), groups.Member("q", 0, inner=2, outer=2)).tolist()
    [0, 1, 4, 5]
  """
  keep = np.asarray(keep, bool)
  counts = keep.sum(-1)
  if keep.ndim == 2 and len(set(counts.tolist())) > 1:
    raise ValueError(f"Compacting stacked leaf '{m.path}' needs one kept count in every layer, "
                     f"got {counts.tolist()}.")
  entries = np.broadcast_to(keep[..., None, :, None], keep.shape[:-1] + (m.outer, keep.shape[-1],
                                                                         m.inner))
  entries = entries.reshape(keep.shape[:-1] + (-1,))
  if keep.ndim == 1:
    return np.flatnonzero(entries)
  return np.stack([np.flatnonzero(row) for row in entries])

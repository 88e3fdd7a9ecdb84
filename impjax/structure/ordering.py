"""Ordered widths over discovered groups: any model trained to work at every width.

:func:`unit_ranks` orders the units of every MLP-unit and head group (per layer of a stacked
group): by index (FjORD's fixed order) or by an importance tree reduced over each group's
members (:func:`impjax.structure.group_scores`). :func:`width_masks` keeps, in every group and
layer, the ``ceil(width * units)`` units of lowest rank, across all of a unit's coupled
entries (a head's q, k, v and output rows; an MLP unit's input column, bias and output row),
and :func:`at_width` zeroes the rest. The residual stream, head widths, norms, the stem and the
classifier are never narrowed. With ``structure=`` :func:`impjax.transforms.ordered_dropout`
trains through these masks, and :func:`impjax.structure.compact_model` of the masks' keep
vectors (:func:`keep_at_width`) cuts the trained model to any width.

References: Horvath et al. 2021, "FjORD" (ordered dropout); Rippel et al. 2014, "Learning
Ordered Representations with Nested Dropout".

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import structure
  >>> params = {"w1": jnp.ones((2, 4)), "w2": jnp.ones((4, 1))}
  >>> s = structure.discover(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params, jnp.ones((1, 2)))
  >>> ranks = structure.unit_ranks(s, params)
  >>> structure.at_width(s, params, ranks, 0.5)["w1"].tolist()
  [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from impjax import groups
from impjax import select
from impjax import tree_utils
from impjax.structure import selection
from impjax.structure.discovery import Structure


def unit_ranks(s: Structure, params: tree_utils.Params,
               importance: tree_utils.Importance | None = None, *kinds: str,
               how: str = "sum") -> dict[str, jax.Array]:
  """``{group name: int32 ranks}`` (``(units,)`` or ``(layers, units)``), rank 0 kept first,
  for the exact groups of ``kinds`` (default: MLP units and heads): index order without
  ``importance`` (FjORD), else the units by descending group score (ties: the earlier unit
  first).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from impjax import structure
    >>> params = {"w1": jnp.array([[1.0, 3.0, 2.0]]), "w2": jnp.ones((3, 1))}
    >>> s = structure.discover(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params,
    ...                        jnp.ones((1, 1)))
    >>> unit_ranks(s, params, jax.tree.map(jnp.abs, params))["hidden:w1"].tolist()
    [2, 0, 1]
  """
  if importance is None:
    leaves = tree_utils.leaves_by_path(params)
    out = {}
    for name, coupled in s.prunable(*kinds).items():
      shape = groups.keep_shape(leaves, coupled)
      out[name] = jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.int32), shape)
    return out
  scores = selection.group_scores(s, importance, *kinds, how=how)
  return {name: select.descending_ranks(v) for name, v in scores.items()}


def keep_at_width(ranks: dict[str, jax.Array], width: Any) -> dict[str, jax.Array]:
  """``{group name: bool keep}``: the ``ceil(width * units)`` units of lowest rank (at least
  one), for :func:`impjax.groups.coupled_masks` or :func:`impjax.structure.compact_model`.

  Example:
    >>> keep_at_width({"g": jnp.array([2, 0, 1, 3])}, 0.5)["g"].tolist()
    [False, True, True, False]
  """
  tree_utils.check_fraction(width, what="width")
  return {name: r < select.num_kept(width, r.shape[-1]) for name, r in ranks.items()}


def width_masks(s: Structure, params: tree_utils.Params, ranks: dict[str, jax.Array],
                width: Any) -> tree_utils.Masks:
  """Element keep-masks like ``params`` at ``width`` (may be traced): every group of ``ranks``
  keeps its lowest-ranked units with all their coupled entries.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> def mlp(p, x):
    ...   return jnp.tanh(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((2, 4)), "w2": jnp.ones((4, 1))}
    >>> s = structure.discover(mlp, params, jnp.ones((1, 2)))
    >>> m = width_masks(s, params, {"hidden:w1": jnp.array([3, 0, 1, 2])}, 0.25)
    >>> m["w2"][:, 0].tolist()
    [False, True, False, False]
  """
  unknown = sorted(set(ranks) - set(s.groups))
  if unknown:
    raise ValueError(f"ranks name groups {unknown} that the structure does not have; its "
                     f"groups: {sorted(s.groups)}.")
  coupled = {name: s.groups[name].coupled for name in ranks}
  return groups.coupled_masks(params, coupled, keep_at_width(ranks, width))


def at_width(s: Structure, params: tree_utils.Params, ranks: dict[str, jax.Array],
             width: Any) -> tree_utils.Params:
  """``params`` with the units beyond ``width`` zeroed (deterministic; see :func:`width_masks`;
  the module's example runs it)."""
  masks = width_masks(s, params, ranks, width)
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.result_type(p))),
                      params, masks)


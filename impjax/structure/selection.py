"""Unit selection over discovered groups: one score per unit, kept counts per layer.

:func:`group_scores` reduces an importance tree (any criterion's: magnitude, Taylor,
Fisher/OBD, ...) over each group's members with :func:`impjax.groups.coupled_scores`: one score
per unit, per layer of a stacked group. :func:`keep_units` keeps the highest-scoring units of
each group, for :func:`impjax.structure.compact_model` or :func:`impjax.groups.coupled_masks`:

- ``scope="layer"``: every group, and every layer of a stacked group, keeps
  ``units - round(fraction * units)`` of its units;
- ``scope="global"``: one budget per group kind (MLP units and heads are never traded for each
  other), ``round(fraction * units)`` over all layers; a unit's score is divided by its layer's
  mean score, so layers of different scale compete fairly (as in Molchanov et al. 2019's global
  ranking of normalized scores).

Either way a layer keeps at least ``min_units`` (default 1: no layer is emptied, no layer loses
all its heads) and its kept count is rounded up to a multiple of ``multiple_of`` (e.g. 8 or 128
for accelerator tiles; never past the layer's units), so the global count can exceed the
budget by the rounding. Ties keep the earlier unit.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import structure
  >>> params = {"w1": jnp.array([[1.0, 3.0, 2.0, 0.5]]), "w2": jnp.ones((4, 1))}
  >>> s = structure.discover(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params, jnp.ones((1, 1)))
  >>> keep = structure.keep_units(s, jax.tree.map(jnp.abs, params), 0.5)
  >>> {name: k.tolist() for name, k in keep.items()}
  {'hidden:w1': [False, True, True, False]}

Reference: Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning";
Fang et al. 2023, "DepGraph: Towards Any Structural Pruning".
"""

from __future__ import annotations

import math

import jax
import numpy as np

from impjax import groups
from impjax import tree_utils
from impjax.structure.discovery import Structure

SCOPES = ("layer", "global")


def group_scores(s: Structure, importance: tree_utils.Importance, *kinds: str,
                 how: str = "sum") -> dict[str, jax.Array]:
  """``{group name: (units,) or (layers, units) scores}`` of the exact groups of ``kinds``
  (default: MLP units and heads), each member's importance reduced over its other axes
  (``how``: sum, mean, max, l2) and summed over the members.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> params = {"w1": jnp.ones((2, 3)), "w2": jnp.ones((3, 1))}
    >>> s = structure.discover(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params,
    ...                        jnp.ones((1, 2)))
    >>> group_scores(s, params)["hidden:w1"].tolist()  # 2 entries of w1 + 1 of w2 per unit
    [3.0, 3.0, 3.0]
  """
  return {name: groups.coupled_scores(importance, coupled, how)
          for name, coupled in s.prunable(*kinds).items()}


def keep_units(s: Structure, importance: tree_utils.Importance, fraction: float, *kinds: str,
               scope: str = "layer", min_units: int = 1, multiple_of: int = 1,
               how: str = "sum") -> dict[str, np.ndarray]:
  """Bool keep masks removing ``fraction`` of the units of the groups of ``kinds``.

  Args:
    s: the model's :class:`Structure`.
    importance: an importance tree like the params (higher = keep).
    fraction: share of the units removed, in [0, 1].
    *kinds: group kinds (default ``"hidden"``, ``"heads"``).
    scope: ``"layer"`` (each layer removes its share) or ``"global"`` (one budget per kind).
    min_units: the fewest units a layer keeps (at most its units).
    multiple_of: kept counts are rounded up to a multiple of this.
    how: reduction of a member's importance over its other axes.

  Returns:
    ``{group name: bool array}``, ``(units,)`` or ``(layers, units)`` for a stacked group.
  """
  tree_utils.check_fraction(fraction, what="fraction")
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
  for name, value in (("min_units", min_units), ("multiple_of", multiple_of)):
    if not isinstance(value, int) or value < (0 if name == "min_units" else 1):
      raise ValueError(f"{name} must be an int >= {0 if name == 'min_units' else 1}, got "
                       f"{value!r}.")
  scores = {n: np.asarray(v, np.float64) for n, v in group_scores(s, importance, *kinds,
                                                                  how=how).items()}
  if not scores:
    raise ValueError(f"The structure has no exact groups of kinds {kinds or ('hidden', 'heads')}; "
                     f"its groups: {sorted({g.kind for g in s.groups.values()})}.")
  rows = {n: v.reshape(-1, v.shape[-1]) for n, v in scores.items()}
  if scope == "layer":
    counts = {n: [r.shape[-1] - int(math.floor(fraction * r.shape[-1] + 0.5))] * r.shape[0]
              for n, r in rows.items()}
  else:
    counts = {}
    for kind in sorted({s.groups[n].kind for n in rows}):
      names = [n for n in rows if s.groups[n].kind == kind]
      counts.update(_global_counts({n: rows[n] for n in names}, fraction, min_units))
  keep = {}
  for name, r in rows.items():
    units = r.shape[-1]
    mask = np.zeros(r.shape, bool)
    for i, (row, k) in enumerate(zip(r, counts[name])):
      k = min(units, max(k, min_units))
      k = min(units, -(-k // multiple_of) * multiple_of)
      mask[i, np.argsort(-row, kind="stable")[:k]] = True
    keep[name] = mask.reshape(scores[name].shape)
  return keep


def _global_counts(rows: dict[str, np.ndarray], fraction: float,
                   min_units: int) -> dict[str, list[int]]:
  """Per-row kept counts of one budget over all rows: the lowest normalized scores go first,
  a row stopping at ``min_units``."""
  entries = []
  for name, r in rows.items():
    for i, row in enumerate(r):
      mean = row.mean()
      normalized = row / mean if mean > 0 else row
      entries.extend((float(v), name, i, j) for j, v in enumerate(normalized))
  total = len(entries)
  budget = int(math.floor(fraction * total + 0.5))
  counts = {name: [r.shape[-1]] * r.shape[0] for name, r in rows.items()}
  removed = 0
  # Lowest score first; among ties the later unit goes first, so ties keep the earlier unit.
  for _, name, i, _ in sorted(entries, key=lambda e: (e[0], -e[3])):
    if removed == budget:
      break
    if counts[name][i] > min(min_units, rows[name].shape[-1]):
      counts[name][i] -= 1
      removed += 1
  return counts

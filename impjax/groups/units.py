"""Units: the output units (neurons, channels) of every module of a plan, and their scores.

A unit of a module is the index along the ``neurons`` axis of its planned leaves (a Dense
kernel's column and its bias entry, a Conv's output channel). Ordered dropout, layer slicing
and structured scores read units from here.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups
  >>> imp = {"d": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  >>> groups.unit_scores(imp, groups.plan(imp, [(r".*", groups.neurons(-1))]))["d"].tolist()
  [3.0, 3.0, 3.0]
"""

from __future__ import annotations

import posixpath

import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.groups import granularity


def module_units(the_plan: tree_utils.Plan, params: tree_utils.Params) -> dict[str, int]:
  """``{module path: unit count}`` of the ``neurons`` leaves of a plan, checking that the
  leaves of one module (its kernel and bias) agree on the count; ``dense`` leaves are skipped.

  Example:
    >>> from impjax import groups
    >>> p = {"d": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    >>> module_units(groups.plan(p, [(r".*", groups.neurons(-1))]), p)
    {'d': 3}
  """
  units: dict[str, int] = {}
  for path, g, p in zip(tree_utils.path_names(params), jax.tree.leaves(the_plan),
                        jax.tree.leaves(params)):
    if g.kind == "dense":
      continue
    if g.kind != "neurons":
      raise ValueError(f"Units are 'neurons' leaves, but leaf '{path}' is planned as "
                       f"'{g.kind}'.")
    module, n = posixpath.dirname(path), np.shape(p)[g.axis]
    if units.setdefault(module, n) != n:
      raise ValueError(f"Leaf '{path}' has {n} units along axis {g.axis}, but other leaves of "
                       f"module '{module}' have {units[module]}.")
  return units


def unit_scores(importance: tree_utils.Importance, the_plan: tree_utils.Plan,
                reduce: str = "sum") -> dict[str, jax.Array]:
  """Per-unit importance of every module of a ``neurons`` plan: each planned leaf reduced per unit
  (:func:`impjax.groups.reduce_leaf`), summed over the leaves of a module (kernel + bias).

  Example:
    >>> imp = {"d": {"kernel": jnp.array([[1.0, 2.0], [3.0, 0.0]]), "bias": jnp.array([0.0, 5.0])}}
    >>> from impjax import groups
    >>> unit_scores(imp, groups.plan(imp, [(r".*", groups.neurons(-1))]))["d"].tolist()
    [4.0, 7.0]
  """
  tree_utils.check_same_structure(the_plan, importance, names=("plan", "importance"),
                                  shapes=False)
  tree_utils.check_finite(importance, what="importance")
  module_units(the_plan, importance)
  out: dict[str, jax.Array] = {}
  for path, g, s in zip(tree_utils.path_names(importance), jax.tree.leaves(the_plan),
                        jax.tree.leaves(importance)):
    if g.kind == "neurons":
      module = posixpath.dirname(path)
      unit = granularity.reduce_leaf(s.astype(jnp.float32), g, reduce)
      out[module] = out[module] + unit if module in out else unit
  return out

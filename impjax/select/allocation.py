"""Sparsity allocation across leaves: uniform and Erdős–Rényi-Kernel (ERK).

Reference: Evci et al. 2020, "Rigging the Lottery" (ERK: density proportional to
``sum(shape) / prod(shape)``, capped at 1, scaled to meet the global budget).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, select
  >>> params = {"a": {"kernel": jnp.ones((100, 100))}, "b": {"kernel": jnp.ones((100, 10))}}
  >>> s = select.erk(params, groups.plan(params), 0.9)
  >>> s["a"]["kernel"] > s["b"]["kernel"]
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from impjax import tree_utils


def uniform(params: tree_utils.Params, the_plan: tree_utils.Plan, sparsity: float) -> Any:
  """The same sparsity for every prunable leaf, 0 for dense ones."""
  tree_utils.check_fraction(sparsity, what="sparsity")
  return jax.tree.map(lambda p, g: 0.0 if g.kind == "dense" else float(sparsity),
                      params, the_plan)


def erk(params: tree_utils.Params, the_plan: tree_utils.Plan, sparsity: float,
        power: float = 1.0) -> Any:
  """Per-leaf sparsities with ERK densities whose parameter-weighted mean meets ``sparsity``.

  Leaves whose ERK density would exceed 1 are kept dense and the rest rescaled (RigL's loop).
  A stacked leaf planned per layer (a granularity with a ``layer_axis``) is scored by the
  shape of one layer, so it gets the density its layers would get as separate leaves.
  """
  tree_utils.check_fraction(sparsity, what="sparsity")
  flat, treedef = jax.tree.flatten(params)
  plans = jax.tree.leaves(the_plan)
  shapes = [np.shape(p) for p in flat]
  prunable = [i for i, g in enumerate(plans) if g.kind != "dense"]
  sizes = {i: math.prod(shapes[i]) for i in prunable}
  layer = lambda i: (shapes[i] if plans[i].layer_axis is None else
                     tuple(d for a, d in enumerate(shapes[i])
                           if a != plans[i].layer_axis % len(shapes[i])))
  raw = {i: (sum(layer(i)) / math.prod(layer(i))) ** power for i in prunable}
  budget = (1.0 - sparsity) * sum(sizes.values())
  dense: set[int] = set()
  while True:
    free = [i for i in prunable if i not in dense]
    remaining = budget - sum(sizes[i] for i in dense)
    denominator = sum(raw[i] * sizes[i] for i in free)
    eps = remaining / denominator if denominator else 0.0
    over = [i for i in free if eps * raw[i] > 1.0]
    if not over:
      break
    dense.update(over)
  out = [0.0] * len(flat)
  for i in prunable:
    out[i] = 0.0 if i in dense else float(min(max(1.0 - eps * raw[i], 0.0), 1.0))
  return jax.tree.unflatten(treedef, out)

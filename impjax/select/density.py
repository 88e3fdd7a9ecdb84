"""Per-leaf kept counts of a density distribution, whole numbers that meet the budget exactly.

:func:`layer_counts` turns the per-leaf sparsities of :func:`impjax.select.uniform` or
:func:`impjax.select.erk` into how many weights each prunable leaf keeps. Each leaf's ideal
count ``(1 - s_l) * n_l`` is rounded down and the units left over go, one each, to the leaves
with the largest remainders (ties to the earlier leaf; Hamilton's method), so the counts sum
to exactly ``N - round(sparsity * N)`` over the ``N`` prunable weights and no leaf is off by
a whole unit. Sparse training keeps these counts through every mask update.

Reference: Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners" (uniform and
Erdős–Rényi-Kernel densities for sparse training).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, select
  >>> params = {"a": {"kernel": jnp.ones((100, 100))}, "b": {"kernel": jnp.ones((100, 10))},
  ...           "b_bias": jnp.ones(10)}
  >>> counts = select.layer_counts(params, groups.plan(params), 0.9, "erk")
  >>> counts
  {'a': {'kernel': 710}, 'b': {'kernel': 390}, 'b_bias': 10}
  >>> counts["a"]["kernel"] + counts["b"]["kernel"] == round(0.1 * 11000)
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from impjax import tree_utils
from impjax.select import allocation
from impjax.select.topk import num_to_prune

DISTRIBUTIONS = ("uniform", "erk")


def layer_counts(params: tree_utils.Params, the_plan: tree_utils.Plan, sparsity: float,
                 distribution: str = "erk") -> Any:
  """Weights kept per leaf (Python ints) under ``distribution`` at global ``sparsity``.

  Args:
    params: the params (only shapes are read).
    the_plan: granularity tree from :func:`impjax.groups.plan`; dense leaves keep all their
      weights, every other leaf counts elements.
    sparsity: the fraction of the prunable weights pruned, in [0, 1] (static).
    distribution: ``"uniform"`` (the same density everywhere) or ``"erk"`` (density
      proportional to ``sum(shape) / prod(shape)``, dense where it would exceed 1).

  Returns:
    A tree like ``params`` of kept counts, summing over the prunable leaves to
    ``N - round(sparsity * N)`` (:func:`impjax.select.num_to_prune`).
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}.")
  tree_utils.check_same_structure(params, the_plan, names=("params", "plan"), shapes=False)
  per_leaf = (allocation.erk if distribution == "erk" else allocation.uniform)(
      params, the_plan, sparsity)
  flat, treedef = jax.tree.flatten(params)
  sizes = [math.prod(np.shape(p)) for p in flat]
  prunable = [i for i, g in enumerate(jax.tree.leaves(the_plan)) if g.kind != "dense"]
  ideal = {i: (1.0 - s) * sizes[i] for i, s in enumerate(jax.tree.leaves(per_leaf))
           if i in prunable}
  counts = list(sizes)
  for i in prunable:
    counts[i] = min(int(math.floor(ideal[i])), sizes[i])
  total = sum(sizes[i] for i in prunable)
  left = total - int(num_to_prune(sparsity, total)) - sum(counts[i] for i in prunable)
  by_remainder = sorted((i for i in prunable if counts[i] < sizes[i]),
                        key=lambda i: (counts[i] - ideal[i], i))
  for i in by_remainder[:max(left, 0)]:
    counts[i] += 1
  return jax.tree.unflatten(treedef, counts)

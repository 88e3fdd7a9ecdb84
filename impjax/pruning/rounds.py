"""Pruning in rounds without training: re-score the partly pruned model before each cut.

One-shot saliencies (Taylor, OBD) estimate the loss change of removing each weight alone;
removing 90% at once breaks that assumption. Pruning to the target in ``rounds`` geometric
steps (``1 - (1 - s)^(r / R)``, the iterative schedule), with importance recomputed on the
pruned weights each round and no weight update, keeps the estimates local.

Reference: Tanaka et al. 2020, "Pruning neural networks without any data by iteratively
conserving synaptic flow" (iterative scoring avoids layer collapse); de Jorge et al. 2021,
"Progressive Skeletonization"; Singh & Alistarh 2020, "WoodFisher" (multi-step one-shot).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, pruning, scores
  >>> params = {"d": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2)}}
  >>> masks = pruning.prune_in_rounds(params, groups.plan(params), 0.75, scores.magnitude,
  ...                                 rounds=3)
  >>> int((~masks["d"]["kernel"]).sum())
  6
"""

from __future__ import annotations

from typing import Any, Callable

from impjax import tree_utils
from impjax import schedules
from impjax import select
from impjax.transforms import masking


def prune_in_rounds(params: tree_utils.Params, the_plan: tree_utils.Plan, sparsity: float,
                    importance_fn: Callable[[Any], Any], rounds: int,
                    selector: select.Selector = select.Selector()) -> tree_utils.Masks:
  """Keep-masks reaching ``sparsity`` in ``rounds`` cuts, re-scoring the pruned params.

  Args:
    params: the trained parameters (not modified).
    the_plan: granularities from :func:`impjax.groups.plan`.
    sparsity: final fraction of prunable units to prune.
    importance_fn: ``pruned_params -> importance``; e.g. a calibrated criterion.
    rounds: number of cuts (1 is plain one-shot pruning).
    selector: how importance becomes masks (:func:`impjax.select.selector`).

  Returns:
    Bool keep-masks like :func:`impjax.select.masks`; units pruned in a round stay pruned.
  """
  schedule = schedules.iterative(sparsity, rounds, begin_step=0, frequency=1)
  masks = masking.initial_masks(params, the_plan)
  for r in range(rounds):
    importance = importance_fn(masking.apply_masks(params, masks))
    masks = select.masks(importance, the_plan, float(schedule.sparsity(r)), selector,
                         previous=masks)
  return masks

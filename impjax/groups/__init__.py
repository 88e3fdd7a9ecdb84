"""Groups: how element scores gather into units, and which units are pruned together.

- ``granularity``: element, neurons, blocks, whole leaves and N:M granularities, with their
  reductions (sum, mean, max, L2) and expansion back to elements.
- ``rules``: regex path rules that plan a granularity per leaf (biases, norms and embeddings
  dense by default).
- ``normalize``: per-leaf normalizers of group scores (none, L2, max, LAMP).
- ``units``: the output units of every module of a plan and their per-unit scores.
- ``coupled``: coupled groups (the leaves and axes one unit spans) with their scores and masks.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups
  >>> imp = {"d": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]])}}
  >>> groups.reduce(imp, groups.plan(imp, [("kernel", groups.neurons(-1))]))["d"]["kernel"].tolist()
  [4.0, 6.0]
"""

from impjax.groups.coupled import Coupled
from impjax.groups.coupled import coupled_masks
from impjax.groups.coupled import coupled_scores
from impjax.groups.coupled import is_stacked
from impjax.groups.coupled import keep_shape
from impjax.groups.coupled import Member
from impjax.groups.coupled import members
from impjax.groups.coupled import num_entries
from impjax.groups.granularity import DENSE
from impjax.groups.granularity import Granularity
from impjax.groups.granularity import REDUCTIONS
from impjax.groups.granularity import blocks
from impjax.groups.granularity import element
from impjax.groups.granularity import expand_leaf
from impjax.groups.granularity import leaf
from impjax.groups.granularity import n_of_m
from impjax.groups.granularity import neurons
from impjax.groups.granularity import num_groups
from impjax.groups.granularity import per_layer
from impjax.groups.granularity import reduce_leaf
from impjax.groups.normalize import NORMALIZERS
from impjax.groups.normalize import lamp
from impjax.groups.normalize import normalize
from impjax.groups.normalize import normalize_leaf
from impjax.groups.rules import DEFAULT_RULES
from impjax.groups.rules import Rules
from impjax.groups.rules import OptionalRule
from impjax.groups.rules import expand
from impjax.groups.rules import optional
from impjax.groups.rules import plan
from impjax.groups.rules import reduce
from impjax.groups.units import module_units
from impjax.groups.units import unit_scores

__all__ = [
    "DEFAULT_RULES",
    "DENSE",
    "NORMALIZERS",
    "REDUCTIONS",
    "Coupled",
    "Granularity",
    "Member",
    "OptionalRule",
    "Rules",
    "blocks",
    "coupled_masks",
    "coupled_scores",
    "element",
    "expand",
    "expand_leaf",
    "is_stacked",
    "keep_shape",
    "lamp",
    "leaf",
    "members",
    "module_units",
    "n_of_m",
    "neurons",
    "normalize",
    "normalize_leaf",
    "optional",
    "num_entries",
    "num_groups",
    "per_layer",
    "plan",
    "reduce",
    "reduce_leaf",
    "unit_scores",
]

"""Groups: granularities, path rules, reductions and normalizers."""

from impjax.groups.granularity import (DENSE, REDUCTIONS, Granularity, blocks, element,
                                       expand_leaf, leaf, n_of_m, neurons, num_groups,
                                       reduce_leaf)
from impjax.groups.normalize import NORMALIZERS, lamp, normalize, normalize_leaf
from impjax.groups.rules import DEFAULT_RULES, Rules, expand, plan, reduce

__all__ = [
    "DENSE", "REDUCTIONS", "Granularity", "blocks", "element", "expand_leaf", "leaf", "n_of_m",
    "neurons", "num_groups", "reduce_leaf", "NORMALIZERS", "lamp", "normalize",
    "normalize_leaf", "DEFAULT_RULES", "Rules", "expand", "plan", "reduce",
]

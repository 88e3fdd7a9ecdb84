"""Select: decisions from importance — exact top-k, thresholds, N:M, allocation, masks."""

from impjax.select.allocation import erk, uniform
from impjax.select.masks import masks
from impjax.select.n_of_m import n_of_m, n_of_m_leaf
from impjax.select.topk import (Scope, num_to_prune, prune_lowest, sharded_topk, sortable_keys,
                                threshold, topk)

__all__ = [
    "erk", "uniform", "masks", "n_of_m", "n_of_m_leaf", "Scope", "num_to_prune",
    "prune_lowest", "sharded_topk", "sortable_keys", "threshold", "topk",
]

from impjax.select.bits import (allocate, average_bits, bits_of, gain_per_bit, greedy, knapsack,
                                layer_importance, lowering, order_bits, salient_channels,
                                to_bits, unit_sizes)

__all__ += [
    "allocate", "average_bits", "bits_of", "gain_per_bit", "greedy", "knapsack",
    "layer_importance", "lowering",
    "order_bits", "salient_channels", "to_bits", "unit_sizes",
]

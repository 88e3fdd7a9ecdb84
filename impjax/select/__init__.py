"""Select: decisions from importance — masks, ranks and counts, and bit-widths.

- ``topk``: exact top-k by radix select (local, global or per-scope), thresholds, and
  ``sharded_topk`` over ``shard_map``.
- ``n_of_m``: N:M masks. ``allocation``: uniform and ERK per-leaf sparsities; ``density``:
  the whole per-leaf counts they keep, exact in total (:func:`layer_counts`).
- ``selector``: a :class:`Selector` holding every selection option as one value.
- ``masks``: importance to element masks under a plan and a selector.
- ``ranks``: unit ranks by importance and the unit count a width keeps.
- ``bit_solvers``: knapsack, greedy and lowering over flat tables; ``bits``: bit allocation
  over trees (per leaf or channel), layer importance, salient channels.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import select
  >>> select.topk({"w": jnp.array([3.0, 1.0, 2.0, 4.0])}, sparsity=0.5)["w"].tolist()
  [True, False, False, True]
"""

from impjax.select.allocation import erk
from impjax.select.allocation import uniform
from impjax.select.bit_solvers import greedy
from impjax.select.bit_solvers import knapsack
from impjax.select.bit_solvers import lowering
from impjax.select.bits import allocate
from impjax.select.bits import average_bits
from impjax.select.bits import bits_of
from impjax.select.bits import gain_per_bit
from impjax.select.bits import layer_importance
from impjax.select.bits import order_bits
from impjax.select.bits import salient_channels
from impjax.select.bits import to_bits
from impjax.select.bits import unit_sizes
from impjax.select.density import DISTRIBUTIONS
from impjax.select.density import layer_counts
from impjax.select.masks import masks
from impjax.select.n_of_m import n_of_m
from impjax.select.n_of_m import n_of_m_leaf
from impjax.select.ranks import descending_ranks
from impjax.select.ranks import num_kept
from impjax.select.ranks import unit_ranks
from impjax.select.selector import ALLOCATIONS
from impjax.select.selector import Selector
from impjax.select.selector import selector
from impjax.select.topk import Scope
from impjax.select.topk import num_to_prune
from impjax.select.topk import prune_lowest
from impjax.select.topk import sharded_topk
from impjax.select.topk import sortable_keys
from impjax.select.topk import threshold
from impjax.select.topk import topk

__all__ = [
    "ALLOCATIONS",
    "DISTRIBUTIONS",
    "Scope",
    "Selector",
    "allocate",
    "average_bits",
    "bits_of",
    "erk",
    "descending_ranks",
    "gain_per_bit",
    "greedy",
    "knapsack",
    "layer_counts",
    "layer_importance",
    "lowering",
    "masks",
    "n_of_m",
    "n_of_m_leaf",
    "num_kept",
    "num_to_prune",
    "order_bits",
    "prune_lowest",
    "salient_channels",
    "selector",
    "sharded_topk",
    "sortable_keys",
    "threshold",
    "to_bits",
    "topk",
    "uniform",
    "unit_ranks",
    "unit_sizes",
]

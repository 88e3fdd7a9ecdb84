"""Pruning of pretrained models: layer-sequential one-shot (magnitude, Wanda, SparseGPT),
structured pruning of coupled units and heads, and compaction into a smaller model."""

from impjax.pruning.sparsegpt import inverse_hessian_factor, reconstruction_error, sparsegpt

__all__ = ["inverse_hessian_factor", "reconstruction_error", "sparsegpt"]

from impjax.pruning.layerwise import METHODS, linear_paths, prune_kernel, prune_layerwise

__all__ += ["METHODS", "linear_paths", "prune_kernel", "prune_layerwise"]

from impjax.pruning.structured import (Coupled, amp_search, encoder_groups,
                                       entropy_taylor_scores, keep_top, search_keep, unit_masks,
                                       unit_scores)
from impjax.pruning.compact import compact, compact_encoder

__all__ += ["Coupled", "amp_search", "encoder_groups", "entropy_taylor_scores", "keep_top", "search_keep", "unit_masks",
            "unit_scores", "compact", "compact_encoder"]

"""Transforms: act on importance — masking (pruning) during training."""

from impjax.transforms.masking import (MaskedState, apply_masks, find_masked_state,
                                       initial_masks, masked, sparsity_report)

__all__ = ["MaskedState", "apply_masks", "find_masked_state", "initial_masks", "masked",
           "sparsity_report"]

"""Transforms: act on importance — masking (pruning) during training."""

from impjax.transforms.masking import (MaskedState, apply_masks, current_masks,
                                       find_masked_state, initial_masks, masked, pack_masks,
                                       sparsity_report, unpack_masks)

__all__ = ["MaskedState", "apply_masks", "current_masks", "find_masked_state", "initial_masks",
           "masked", "pack_masks", "sparsity_report", "unpack_masks"]

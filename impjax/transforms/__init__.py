"""Transforms: act on importance — masking (pruning) during training."""

from impjax.transforms.masking import (MaskedState, apply_masks, current_masks,
                                       find_masked_state, initial_masks, masked, pack_masks,
                                       sparsity_report, unpack_masks)

from impjax.transforms.rounds import prune_in_rounds

__all__ = ["MaskedState", "apply_masks", "current_masks", "find_masked_state", "initial_masks",
           "masked", "pack_masks", "sparsity_report", "unpack_masks", "prune_in_rounds"]

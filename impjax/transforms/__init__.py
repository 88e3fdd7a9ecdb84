"""Transforms: act on importance — masking (pruning) during training."""

from impjax.transforms.masking import (MaskedState, apply_masks, current_masks,
                                       find_masked_state, initial_masks, masked, pack_masks,
                                       sparsity_report, unpack_masks)

from impjax.transforms.rounds import prune_in_rounds

__all__ = ["MaskedState", "apply_masks", "current_masks", "find_masked_state", "initial_masks",
           "masked", "pack_masks", "sparsity_report", "unpack_masks", "prune_in_rounds"]

from impjax.transforms.fake_quant import (CONVENTIONS, FORMATS, Quantized, Scheme, cast,
                                          check_bits, check_bits_tree, dequantize, divide,
                                          expand, fake_quant, fake_quant_array, is_format,
                                          qrange, quantize, scale_shape, ste)

__all__ += [
    "CONVENTIONS", "FORMATS", "Quantized", "Scheme", "cast", "check_bits", "check_bits_tree",
    "dequantize", "divide", "expand", "fake_quant", "fake_quant_array", "is_format", "qrange",
    "quantize", "scale_shape", "ste",
]

from impjax.transforms.qat import quantized

__all__ += ["quantized"]

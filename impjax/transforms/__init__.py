"""Transforms: act on importance — masking (pruning) during training."""

from impjax.transforms.masking import (MaskedState, apply_masks, current_masks,
                                       find_masked_state, initial_masks, masked, pack_masks,
                                       sparsity_report, unpack_masks)

from impjax.transforms.rounds import prune_in_rounds

__all__ = ["MaskedState", "apply_masks", "current_masks", "find_masked_state", "initial_masks",
           "masked", "pack_masks", "sparsity_report", "unpack_masks", "prune_in_rounds"]

from impjax.transforms.layer_drop import (every_other, layer_drop, layer_drop_keep,
                                          layer_drop_probs, most_important)
from impjax.transforms.layer_samplers import (IstState, LayerSampler, LisaState, ist,
                                              ist_scores, lisa, sample_layers)
from impjax.transforms.layer_stack import (gather, get_path, layer_scores, num_layers,
                                           run_layers, run_sampled, scatter, set_path,
                                           stack_layers, unstack_layers)
from impjax.transforms.ordered_dropout import (FJORD_WIDTHS, ORDER_RULES, ImportanceOrderState,
                                               at_width, fjord_width, importance_order,
                                               index_ranks, nested_width, num_kept,
                                               ordered_dropout, unit_ranks, unit_scores,
                                               width_masks)
from impjax.transforms.layer_sampling import LayerSampling, LayerSamplingState, layer_sampling
from impjax.transforms.targeted_dropout import targeted, targeted_dropout, targeted_masks

__all__ += [
    "every_other", "layer_drop", "layer_drop_keep", "layer_drop_probs", "most_important",
    "IstState", "LayerSampler", "LisaState", "ist", "ist_scores", "lisa", "sample_layers",
    "gather", "get_path", "layer_scores", "num_layers", "run_layers", "run_sampled", "scatter",
    "set_path", "stack_layers", "unstack_layers", "FJORD_WIDTHS", "ORDER_RULES", "ImportanceOrderState", "at_width", "fjord_width",
    "importance_order", "index_ranks", "nested_width", "num_kept", "ordered_dropout",
    "unit_ranks", "unit_scores", "width_masks", "LayerSampling", "LayerSamplingState",
    "layer_sampling", "targeted", "targeted_dropout", "targeted_masks",
]

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

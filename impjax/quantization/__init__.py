"""Quantization: sensitivities of candidate precisions, post-training calibration, and real
integer storage (int8, int4 packed two per byte) with byte counts and loading back."""

from impjax.quantization.export import (Packed, bytes_per_leaf, export, load, nbytes, pack_int4,
                                        unpack_int4)
from impjax.quantization.ptq import CLIP_RATIOS, calibrate, calibrate_clip, output_error
from impjax.quantization.sensitivity import hawq_table, output_error_table, squared_errors

__all__ = [
    "Packed", "bytes_per_leaf", "export", "load", "nbytes", "pack_int4", "unpack_int4",
    "CLIP_RATIOS", "calibrate", "calibrate_clip", "output_error", "hawq_table",
    "output_error_table", "squared_errors",
]

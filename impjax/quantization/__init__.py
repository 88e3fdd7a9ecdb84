"""Quantization: quantizer numerics, sensitivities of candidate precisions, post-training
calibration of clip ratios, and real integer storage with byte counts.

- ``numerics``: :class:`Scheme`, ``quantize``/``dequantize``, ``fake_quant_array`` (STE),
  float-format ``cast``, and the checks of bits and salient-mask trees.
- ``sensitivity``: HAWQ tables and output-error tables of candidate precisions.
- ``ptq``: the output error of a quantized kernel and the clip ratios that minimize it.
- ``export``: int8 / int4 (two per byte) storage, byte counts and loading back.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import quantization
  >>> quantization.fake_quant_array(jnp.array([1.5, -0.5, 0.1]), 3).tolist()
  [1.5, -0.5, 0.0]
"""

from impjax.quantization.export import Packed
from impjax.quantization.export import bytes_per_leaf
from impjax.quantization.export import export
from impjax.quantization.export import load
from impjax.quantization.export import nbytes
from impjax.quantization.export import pack_int4
from impjax.quantization.export import unpack_int4
from impjax.quantization.numerics import CONVENTIONS
from impjax.quantization.numerics import FORMATS
from impjax.quantization.numerics import MAX_BITS
from impjax.quantization.numerics import MIN_BITS
from impjax.quantization.numerics import Quantized
from impjax.quantization.numerics import Scheme
from impjax.quantization.numerics import cast
from impjax.quantization.numerics import check_bits
from impjax.quantization.numerics import check_bits_tree
from impjax.quantization.numerics import check_salient_tree
from impjax.quantization.numerics import dequantize
from impjax.quantization.numerics import divide
from impjax.quantization.numerics import expand
from impjax.quantization.numerics import fake_quant_array
from impjax.quantization.numerics import is_format
from impjax.quantization.numerics import qrange
from impjax.quantization.numerics import quantize
from impjax.quantization.numerics import scale_shape
from impjax.quantization.numerics import ste
from impjax.quantization.ptq import CLIP_RATIOS
from impjax.quantization.ptq import clip_ratio
from impjax.quantization.ptq import clip_ratios
from impjax.quantization.ptq import output_error
from impjax.quantization.sensitivity import hawq_table
from impjax.quantization.sensitivity import output_error_table
from impjax.quantization.sensitivity import squared_errors

__all__ = [
    "CLIP_RATIOS",
    "CONVENTIONS",
    "FORMATS",
    "MAX_BITS",
    "MIN_BITS",
    "Packed",
    "Quantized",
    "Scheme",
    "bytes_per_leaf",
    "cast",
    "check_bits",
    "check_bits_tree",
    "check_salient_tree",
    "clip_ratio",
    "clip_ratios",
    "dequantize",
    "divide",
    "expand",
    "export",
    "fake_quant_array",
    "hawq_table",
    "is_format",
    "load",
    "nbytes",
    "output_error",
    "output_error_table",
    "pack_int4",
    "qrange",
    "quantize",
    "scale_shape",
    "squared_errors",
    "ste",
    "unpack_int4",
]

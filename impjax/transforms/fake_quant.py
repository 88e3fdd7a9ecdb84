"""Fake quantization of a params tree: every leaf at its own bits, straight-through gradients.

``fake_quant(params, bits)`` returns ``dequantize(quantize(w))`` of every leaf that has bits
(integer bits under a :class:`impjax.quantization.Scheme`, or a float format name) in the
forward pass and passes gradients straight through, so a loss of fake-quantized params trains
the float params (QAT, :func:`impjax.transforms.quantized`). The numerics live in
:mod:`impjax.quantization.numerics`.

References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Bengio et al. 2013 (straight-through estimator).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import transforms
  >>> params = {"w": jnp.array([1.5, -0.5, 0.1])}
  >>> transforms.fake_quant(params, {"w": 3})["w"].tolist()
  [1.5, -0.5, 0.0]
  >>> jax.grad(lambda p: transforms.fake_quant(p, {"w": 3})["w"].sum())(params)["w"].tolist()
  [1.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import jax

from impjax import tree_utils
from impjax.quantization import numerics


def fake_quant(params: tree_utils.Params, bits: Any, scheme: Any = numerics.Scheme(),
               clip: Any = None,
               salient: Any = None, salient_bits: int = 8) -> Any:
  """Fake-quantizes every leaf of ``params`` at its ``bits`` (straight-through gradients).

  Args:
    params: a pytree of float arrays.
    bits: a tree like ``params`` whose leaves are ``None`` (kept as is), integer bits
      (int or int array broadcastable to the leaf's scales; may be traced) or a float format
      name from ``impjax.quantization.FORMATS`` (cast with :func:`impjax.quantization.cast`).
    scheme: a :class:`impjax.quantization.Scheme` for the integer leaves, or a tree like
      ``params`` of them (e.g. :func:`impjax.structure.schemes`: each kernel's scales along
      its own output axes).
    clip: optional tree like ``params`` of clip ratios (``None`` leaves: 1), e.g. from
      :func:`impjax.quantization.clip_ratio`.
    salient: optional tree like ``params`` of bool masks that broadcast to their leaf
      (``None`` leaves: no salient values; else ``ValueError`` naming the leaf) kept at
      ``salient_bits``; see :func:`impjax.quantization.fake_quant_array`.
    salient_bits: bits of the salient values.

  Returns:
    A tree like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {"kernel": jnp.array([[1.5, -0.5], [0.1, 0.7]]), "bias": jnp.array([0.1, 0.2])}
    >>> fake_quant(params, {"kernel": 3, "bias": None})["kernel"].tolist()
    [[1.5, -0.5], [0.0, 0.5]]
  """
  numerics.check_bits_tree(params, bits, scheme)
  clip = jax.tree.map(lambda _: None, params) if clip is None else clip
  salient = numerics.check_salient_tree(params, salient)
  schemes = numerics.scheme_tree(params, scheme)

  def leaf(x, b, c, s, sc):
    if b is None:
      return x
    if numerics.is_format(b):
      return numerics.cast(x, b)
    return numerics.fake_quant_array(x, b, sc, 1.0 if c is None else c, s, salient_bits)
  return jax.tree.map(leaf, params, bits, clip, salient, schemes)

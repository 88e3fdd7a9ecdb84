"""Post-training quantization with importance-weighted calibration: per-channel clip search.

For a kernel ``W`` (contraction axes first, outputs last) and the second moment of its
inputs ``G = sum_t w_t x_t x_t^T / sum_t w_t`` over calibration tokens ``t`` with importance
weights ``w_t`` (:func:`impjax.scores.token_gram` with the weights as ``mask``, then
:func:`impjax.scores.means`), the expected squared output error of a quantized ``W`` is
``E_w ||x^T (Q(W) - W)||^2 = diag(D^T G D)`` with ``D = Q(W) - W``, one value per output.
:func:`clip_ratio` quantizes with each clip ratio of a grid (scale from
``ratio * absmax``) and keeps, per output channel, the ratio of least error. With uniform
weights this is MSE-optimal clipping on the layer output; RSQ weights tokens by the attention
they receive (:func:`impjax.scores.attention_received`), so important tokens are reproduced
best.

References: Sung et al. 2025, "RSQ: Learning from Important Tokens Leads to Better Quantized
LLMs" (importance-weighted layer Hessian ``X^T diag(w) X``); Nagel et al. 2021, "A White
Paper on Neural Network Quantization" (MSE range setting).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import quantization, scores, transforms
  >>> x = jax.random.normal(jax.random.key(0), (512, 16))
  >>> w = jax.random.normal(jax.random.key(1), (16, 4))
  >>> gram = scores.means(scores.token_gram(x))["gram"]
  >>> scheme = quantization.Scheme(channel_axes=(-1,))
  >>> clip = quantization.clip_ratio(w, 3, gram, scheme)
  >>> plain = quantization.output_error(w, quantization.fake_quant_array(w, 3, scheme), gram)
  >>> tuned = quantization.output_error(w, quantization.fake_quant_array(w, 3, scheme, clip), gram)
  >>> bool(jnp.all(tuned <= plain)), clip.shape
  (True, (1, 4))
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from impjax.quantization import numerics
from impjax import tree_utils

CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 1.0, 0.95, ..., 0.5


def _as_matrix(kernel: jax.Array) -> jax.Array:
  return kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)


def output_error(kernel: jax.Array, approx: jax.Array, gram: jax.Array) -> jax.Array:
  """``diag(D^T G D)`` with ``D = approx - kernel`` as ``(contraction, outputs)``: the mean
  squared error of each output over the calibration distribution ``G = E[x x^T]``.

  Example:
    >>> output_error(jnp.zeros((2, 1)), jnp.array([[1.0], [2.0]]), jnp.eye(2)).tolist()
    [5.0]
  """
  d = _as_matrix(approx) - _as_matrix(kernel)
  return jnp.sum(d * (gram.astype(jnp.float32) @ d), axis=0)


def clip_ratio(kernel: jax.Array, bits: Any, gram: jax.Array,
                   scheme: numerics.Scheme = numerics.Scheme(),
                   ratios: Sequence[float] = CLIP_RATIOS) -> jax.Array:
  """The clip ratio of least :func:`output_error`, per output channel when the scheme has
  per-output-channel scales (``-1`` among ``channel_axes``), else one for the whole kernel.

  Args:
    kernel: ``(..., outputs)`` weights; the leading axes flatten into the contraction axis of
      ``gram`` (Dense: inputs; Conv: ``(h, w, in)`` patches).
    bits: as in :func:`impjax.quantization.quantize`.
    gram: ``(contraction, contraction)`` second moment of the inputs.
    scheme: the quantization scheme.
    ratios: candidate ratios (ties go to the earlier one).

  Returns:
    float32 ratios shaped ``(1, ..., 1, outputs)`` or ``(1, ..., 1)``, for ``clip`` of
    :func:`impjax.quantization.fake_quant_array`.

  Example:
    >>> clip_ratio(jnp.array([[1.0], [0.1]]), 2, jnp.eye(2), ratios=(1.0, 0.5)).tolist()
    [[1.0]]
  """
  rows = int(np.prod(kernel.shape[:-1])) if kernel.ndim else 1
  if kernel.ndim < 2 or gram.shape != (rows, rows):
    raise ValueError(f"clip_ratio needs a kernel (..., outputs) and a gram of its "
                     f"{rows} contraction inputs; got kernel {kernel.shape}, gram {gram.shape}.")
  per_channel = (kernel.ndim - 1) in {a % kernel.ndim for a in scheme.channel_axes}
  shape = (1,) * (kernel.ndim - 1) + ((kernel.shape[-1],) if per_channel else (1,))
  candidates = jnp.asarray(ratios, jnp.float32)

  def error(ratio):
    approx = numerics.fake_quant_array(kernel, bits, scheme, ratio)
    e = output_error(kernel, approx, gram)
    return e if per_channel else jnp.sum(e, keepdims=True)
  errors = jax.vmap(error)(candidates)
  return candidates[jnp.argmin(errors, axis=0)].reshape(shape)


def clip_ratios(params: tree_utils.Params, bits: Any, grams: Any,
              scheme: Any = numerics.Scheme(),
              ratios: Sequence[float] = CLIP_RATIOS) -> Any:
  """Clip ratios for every leaf with integer bits and a gram (:func:`clip_ratio`).

  Args:
    params: the trained weights.
    bits: bits tree as for :func:`impjax.transforms.fake_quant`.
    grams: tree like ``params`` with a gram per calibrated kernel, ``None`` elsewhere.
    scheme: the quantization scheme, or a tree of them.
    ratios: candidate clip ratios.

  Returns:
    A ``clip`` tree for :func:`impjax.transforms.fake_quant` and
    :func:`impjax.quantization.export` (``None`` where not calibrated).

  Example:
    >>> p = {"k": jnp.array([[1.0], [0.1]]), "b": jnp.zeros(1)}
    >>> c = clip_ratios(p, {"k": 2, "b": None}, {"k": jnp.eye(2), "b": None})
    >>> c["k"].tolist(), c["b"]
    ([[1.0]], None)
  """
  numerics.check_bits_tree(params, bits, scheme)
  is_none = lambda v: v is None
  tree_utils.check_same_structure(
      params, jax.tree.map(lambda g: 0 if g is None else g, grams, is_leaf=is_none),
      names=("params", "grams"), shapes=False)

  def leaf(path, w, b, g, scheme):
    if b is None or g is None or numerics.is_format(b):
      return None
    try:
      return clip_ratio(w, b, g, scheme, ratios)
    except ValueError as e:
      raise ValueError(f"Leaf '{path}': {e}") from e
  return tree_utils.map_with_path(leaf, params, bits, grams, numerics.scheme_tree(params, scheme))

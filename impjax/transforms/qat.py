"""Quantization-aware training: a function transform that fake-quantizes the params first.

``quantized(fn, bits)`` returns ``fn`` evaluated at :func:`fake_quant` of its params argument.
Forward passes see the quantized weights; gradients pass straight through to the float
weights, which the optimizer keeps updating. Wrap a loss to train a Flax model at the
allocated bits (e.g. ``impjax.train.make_train_step(graphdef, tx, loss_fn=quantized(
train.cross_entropy, bits, argnum=1))``) or an apply function to evaluate it quantized.

Reference: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Dong et al. 2020, "HAWQ-V2" (QAT at mixed bits).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import transforms
  >>> loss = lambda p, x: jnp.sum(p["w"] * x)
  >>> qloss = transforms.quantized(loss, {"w": 2})
  >>> p, x = {"w": jnp.array([1.0, 0.4])}, jnp.array([1.0, 1.0])
  >>> float(qloss(p, x)), jax.grad(qloss)(p, x)["w"].tolist()
  (1.0, [1.0, 1.0])
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from impjax.quantization import numerics
from impjax.transforms.fake_quant import fake_quant


def quantized(fn: Callable, bits: Any, scheme: Any = numerics.Scheme(),
              *, argnum: int = 0,
              clip: Any = None, salient: Any = None, salient_bits: int = 8) -> Callable:
  """``fn`` with its positional argument ``argnum`` (the params) fake-quantized first.

  Args:
    fn: any function of a params pytree (a loss, a model's apply).
    bits: bits tree for :func:`impjax.transforms.fake_quant` (may hold traced arrays).
    scheme: the quantization scheme, or a tree of them (as for
      :func:`impjax.transforms.fake_quant`).
    argnum: position of the params among ``fn``'s positional arguments.
    clip: optional clip-ratio tree.
    salient: optional salient-channel masks (kept at ``salient_bits``).
    salient_bits: bits of salient values.

  Returns:
    A function with ``fn``'s signature.

  Example:
    >>> import jax.numpy as jnp
    >>> apply = lambda graphdef, p: p["w"]                 # params second, like train.cross_entropy
    >>> quantized(apply, {"w": 3}, argnum=1)(None, {"w": jnp.array([1.5, 0.1])}).tolist()
    [1.5, 0.0]
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    if len(args) <= argnum:
      raise ValueError(f"quantized: expected the params as positional argument {argnum}, got "
                       f"{len(args)} positional argument(s).")
    args = list(args)
    args[argnum] = fake_quant(args[argnum], bits, scheme, clip, salient, salient_bits)
    return fn(*args, **kwargs)
  return wrapped

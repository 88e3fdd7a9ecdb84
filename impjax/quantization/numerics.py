"""Quantizer numerics: integer round-to-nearest quantizers, a straight-through estimator and
dtype casting (bf16, fp8 e4m3 / e5m2 via ml_dtypes), with the checks of bits trees.

``quantize`` maps a float array to signed integers plus scales (and zero points when
asymmetric) under a :class:`Scheme`: per-tensor, per-channel (``channel_axes`` keep their own
scales), or grouped (``group_size`` consecutive values along ``group_axis`` share a scale).
:func:`fake_quant_array` returns ``dequantize(quantize(w))`` in the forward pass and passes
gradients straight through; :func:`impjax.transforms.fake_quant` applies it to a params tree.

Symmetric scales follow one of two conventions (``Scheme.convention``):

* ``"hawq"``: ``scale = absmax / (2^(b-1) - 1)``, as in HAWQ and most papers;
* ``"qwix"``: ``scale = absmax / (2^(b-1) - 0.5)``, as qwix (int8 divides by 127.5).

Asymmetric scales are ``(max - min) / (2^b - 1)`` with ``min <= 0 <= max`` and the zero point
``round(-2^(b-1) - min / scale)`` (qwix's signed layout). Values round half to even and clip
to ``[-2^(b-1), 2^(b-1) - 1]``. Bits may be traced, and per-channel bits are arrays that
broadcast against the scales.

References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Bengio et al. 2013 (straight-through estimator);
Dong et al. 2020, "HAWQ-V2"; qwix (github.com/google/qwix) for the ``+0.5`` convention.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import quantization
  >>> w = jnp.array([1.5, -0.5, 0.1])
  >>> qw = quantization.quantize(w, 3)
  >>> qw.q.tolist(), qw.scale.tolist()
  ([3, -1, 0], [0.5])
  >>> quantization.dequantize(qw).tolist()
  [1.5, -0.5, 0.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import tree_utils

CONVENTIONS = ("hawq", "qwix")
MIN_BITS, MAX_BITS = 2, 8
FORMATS = {"bfloat16": jnp.bfloat16, "float8_e4m3fn": jnp.float8_e4m3fn,
           "float8_e5m2": jnp.float8_e5m2}


@dataclasses.dataclass(frozen=True)
class Scheme:
  """How an array is quantized (static and hashable, so it can be a ``jit`` static argument).

  Attributes:
    symmetric: symmetric (``absmax``) or asymmetric (``min``/``max`` with a zero point).
    channel_axes: axes that keep one scale per index (``()``: per-tensor; ``(-1,)``: per
      output channel of a Flax kernel).
    group_size: if set, ``group_size`` consecutive values along ``group_axis`` share a scale.
    group_axis: the grouped axis (``-2``: the contraction axis of Dense and Conv kernels).
    convention: symmetric scale denominator, ``"hawq"`` (``2^(b-1) - 1``) or ``"qwix"``
      (``2^(b-1) - 0.5``).

  Example:
    >>> Scheme(channel_axes=(-1,), group_size=32)  # per output channel, 32 inputs per scale
    Scheme(symmetric=True, channel_axes=(-1,), group_size=32, group_axis=-2, convention='hawq')
  """
  symmetric: bool = True
  channel_axes: tuple[int, ...] = ()
  group_size: int | None = None
  group_axis: int = -2
  convention: str = "hawq"

  def __post_init__(self):
    if self.convention not in CONVENTIONS:
      raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}.")
    if self.group_size is not None and self.group_size < 1:
      raise ValueError(f"group_size must be a positive integer, got {self.group_size}.")


class Quantized(NamedTuple):
  """An integer array with its scales.

  Attributes:
    q: int8 values, shaped like the input.
    scale: float32 scales: size 1 on reduced axes, the axis size on channel axes and the
      number of groups on the grouped axis.
    zero_point: int8 zero points shaped like ``scale``, or ``None`` when symmetric.

  Example:
    >>> quantize(jnp.array([[1.0, -3.0], [0.5, 2.0]]), 4, Scheme(channel_axes=(-1,))).scale.shape
    (1, 2)
  """
  q: jax.Array
  scale: jax.Array
  zero_point: jax.Array | None


def scale_shape(shape: tuple[int, ...], scheme: Scheme, path: str = "array") -> tuple[int, ...]:
  """The shape of the scales of an array of ``shape`` (``ValueError`` naming ``path``).

  Example:
    >>> scale_shape((8, 4), Scheme(channel_axes=(-1,), group_size=2))
    (4, 4)
  """
  ndim = len(shape)
  for a in scheme.channel_axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"Leaf '{path}' of shape {shape} has no channel axis {a}.")
  channels = {a % ndim for a in scheme.channel_axes}
  if scheme.group_size is None:
    return tuple(d if a in channels else 1 for a, d in enumerate(shape))
  if not -ndim <= scheme.group_axis < ndim:
    raise ValueError(f"Leaf '{path}' of shape {shape} has no group axis {scheme.group_axis}.")
  group_axis = scheme.group_axis % ndim
  if group_axis in channels:
    raise ValueError(f"Leaf '{path}': axis {scheme.group_axis} cannot be both a channel axis "
                     "and the group axis.")
  if shape[group_axis] % scheme.group_size:
    raise ValueError(f"group_size {scheme.group_size} does not divide axis {scheme.group_axis} "
                     f"of leaf '{path}' (shape {shape}).")
  return tuple(d // scheme.group_size if a == group_axis else (d if a in channels else 1)
               for a, d in enumerate(shape))


def expand(values: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Broadcasts per-scale ``values`` to ``shape``, repeating each group's value over its group.

  Example:
    >>> expand(jnp.array([[1.0], [2.0]]), (4, 1)).ravel().tolist()
    [1.0, 1.0, 2.0, 2.0]
  """
  for a, (d, s) in enumerate(zip(shape, values.shape)):
    if s not in (1, d):
      values = jnp.repeat(values, d // s, axis=a)
  return jnp.broadcast_to(values, shape)


def divide(a: jax.Array, b: Any) -> jax.Array:
  """``a / b`` as XLA compiles it: ``a * (1 / b)`` when ``b`` is broadcast (has fewer
  elements than the result), else a true division.

  XLA rewrites divisions by broadcast or constant values into multiplications by the
  reciprocal; writing that out makes results independent of what XLA sees (eager versus
  ``jit``, static versus traced bits) and lets a numpy reference reproduce them bit for bit.

  Example:
    >>> divide(jnp.array([1.0, 2.0]), jnp.array([4.0])).tolist()
    [0.25, 0.5]
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  ndim = max(a.ndim, b.ndim)
  a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
  b = b.reshape((1,) * (ndim - b.ndim) + b.shape)
  shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape))
  a = expand(a, shape)
  if b.size < a.size:
    return a * expand(1.0 / b, shape)
  return a / expand(b, shape)


def qrange(bits: Any) -> tuple[jax.Array, jax.Array]:
  """``(qmin, qmax) = (-2^(b-1), 2^(b-1) - 1)`` as float32 (``bits`` may be traced).

  Example:
    >>> [v.tolist() for v in qrange(4)]
    [-8.0, 7.0]
  """
  half = jnp.left_shift(1, jnp.asarray(bits, jnp.int32) - 1).astype(jnp.float32)
  return -half, half - 1.0


def _statistics(x: jax.Array, scheme: Scheme, shape_of_scale: tuple[int, ...]):
  """``(lo, hi)`` over each scale's values (``lo`` is ``None`` when symmetric)."""
  split, reduce_axes = [], []
  group_axis = None if scheme.group_size is None else scheme.group_axis % x.ndim
  channels = {a % x.ndim for a in scheme.channel_axes}
  for a, d in enumerate(x.shape):
    if a == group_axis:
      split += [d // scheme.group_size, scheme.group_size]
      reduce_axes.append(len(split) - 1)
    else:
      split.append(d)
      if a not in channels:
        reduce_axes.append(len(split) - 1)
  view = x.reshape(split)
  axes = tuple(reduce_axes)
  if scheme.symmetric:
    return None, jnp.max(jnp.abs(view), axis=axes).reshape(shape_of_scale)
  lo = jnp.minimum(jnp.min(view, axis=axes), 0.0).reshape(shape_of_scale)
  hi = jnp.maximum(jnp.max(view, axis=axes), 0.0).reshape(shape_of_scale)
  return lo, hi


def quantize(x: jax.Array, bits: Any, scheme: Scheme = Scheme(), clip: Any = 1.0) -> Quantized:
  """Round-to-nearest integer quantization of ``x`` (float32 arithmetic).

  Args:
    x: a float array.
    bits: integer bits in [2, 8]; an int, or an int array that broadcasts to the scales'
      shape (per-channel bits). May be traced; traced bits are not checked (the tree-level
      :func:`check_bits_tree` refuses concrete bits outside [2, 8] by leaf), so a traced
      value outside the range gives a meaningless grid.
    scheme: a :class:`Scheme`.
    clip: ratio applied to ``absmax`` (or ``min``/``max``) before the scale is computed;
      scalar or broadcastable to the scales (values beyond it saturate).

  Returns:
    A :class:`Quantized`.

  The scale divides by the bound as ``* (1 / bound)`` and values divide by broadcast
  scales as in :func:`divide`, so results are the same eagerly and under ``jit``, with static
  or traced bits, in a numpy reference and in jitted qwix.

  Example:
    >>> quantize(jnp.array([1.0, -1.0, 0.3]), 8, Scheme(convention="qwix")).q.tolist()
    [127, -127, 38]
  """
  x = jnp.asarray(x, jnp.float32)
  shape_of_scale = scale_shape(x.shape, scheme)
  qmin, qmax = qrange(bits)
  lo, hi = _statistics(x, scheme, shape_of_scale)
  clip = jnp.asarray(clip, jnp.float32)
  tiny_sqrt = jnp.sqrt(jnp.finfo(jnp.float32).tiny)
  if scheme.symmetric:
    bound = qmax + 0.5 if scheme.convention == "qwix" else qmax
    scale = hi * clip * (1.0 / bound)
    scale = jnp.where(scale < tiny_sqrt, jnp.ones_like(scale), scale)
    zero_point = None
    shifted = divide(x, scale)
  else:
    scale = (hi * clip - lo * clip) * (1.0 / (qmax - qmin))
    scale = jnp.where(scale < tiny_sqrt, jnp.ones_like(scale), scale)
    zero_point = jnp.clip(jnp.round(qmin - divide(lo * clip, scale)), qmin, qmax)
    shifted = divide(x, scale) + expand(zero_point, x.shape)
    zero_point = zero_point.astype(jnp.int8)
  q = jnp.clip(jnp.round(shifted), expand(jnp.broadcast_to(qmin, scale.shape), x.shape),
               expand(jnp.broadcast_to(qmax, scale.shape), x.shape))
  return Quantized(q.astype(jnp.int8), scale, zero_point)


def dequantize(qx: Quantized) -> jax.Array:
  """``(q - zero_point) * scale`` in float32.

  Example:
    >>> dequantize(Quantized(jnp.array([3, -1], jnp.int8), jnp.array([0.5]), None)).tolist()
    [1.5, -0.5]
  """
  values = qx.q.astype(jnp.float32)
  if qx.zero_point is not None:
    values = values - expand(qx.zero_point.astype(jnp.float32), qx.q.shape)
  return values * expand(qx.scale, qx.q.shape)


def ste(x: jax.Array, y: jax.Array) -> jax.Array:
  """Straight-through estimator: the value of ``y`` with the gradient of ``x`` (identity).

  ``x - stop_gradient(x)`` is exactly zero, so the forward value is ``y`` bit for bit.

  Example:
    >>> jax.grad(lambda x: ste(x, jnp.round(x)) * 3.0)(0.4).tolist()
    3.0
  """
  return x - lax.stop_gradient(x) + lax.stop_gradient(y)


def fake_quant_array(x: jax.Array, bits: Any, scheme: Scheme = Scheme(), clip: Any = 1.0,
                     salient: jax.Array | None = None, salient_bits: Any = 8) -> jax.Array:
  """``dequantize(quantize(x))`` in ``x``'s dtype, with straight-through gradients.

  Args:
    x: a float array.
    bits: as in :func:`quantize`.
    scheme: a :class:`Scheme`.
    clip: as in :func:`quantize`.
    salient: optional bool mask broadcastable to ``x`` (e.g. salient input channels,
      PTQ1.61): those values are quantized at ``salient_bits`` with their own scales, the
      others at ``bits`` with scales computed without the salient values.
    salient_bits: bits of the salient values.

  Example:
    >>> fake_quant_array(jnp.array([1.5, -0.5, 0.1]), 3).tolist()
    [1.5, -0.5, 0.0]
  """
  def rtn(values, b):
    return dequantize(quantize(values, b, scheme, clip)).astype(x.dtype)
  if salient is None:
    return ste(x, rtn(x, bits))
  zeros = jnp.zeros_like(x)
  mixed = jnp.where(salient, rtn(jnp.where(salient, x, zeros), salient_bits),
                    rtn(jnp.where(salient, zeros, x), bits))
  return ste(x, mixed)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
  """Round-trip through a narrower float ``dtype`` (STE); values saturate at its finite range.

  ``dtype`` is a name in ``FORMATS`` (``"bfloat16"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``)
  or the dtype itself. Rounding is to nearest even (ml_dtypes).

  Example:
    >>> cast(jnp.array([1.0 + 2**-10, 500.0]), "float8_e4m3fn").tolist()
    [1.0, 448.0]
  """
  dtype = jnp.dtype(FORMATS.get(dtype, dtype) if isinstance(dtype, str) else dtype)
  if dtype not in [jnp.dtype(d) for d in FORMATS.values()]:
    raise ValueError(f"cast supports {sorted(FORMATS)}, got {dtype}.")
  info = jnp.finfo(dtype)
  lo, hi = np.asarray(info.min, np.float32), np.asarray(info.max, np.float32)
  narrow = jnp.clip(x.astype(jnp.float32), lo, hi).astype(dtype)
  return ste(x, narrow.astype(x.dtype))


def is_format(value: Any) -> bool:
  """True when a bits-tree leaf names a float format rather than integer bits.

  Example:
    >>> is_format("bfloat16"), is_format(4)
    (True, False)
  """
  return isinstance(value, str)


def check_bits(path: str, bits: Any) -> None:
  """Raises ``ValueError`` naming ``path`` unless concrete ``bits`` lie in [2, 8] (or name a
  float format in ``FORMATS``); traced bits are not checked.

  Example:
    >>> check_bits("dense/kernel", 9)
    Traceback (most recent call last):
    ...
    ValueError: bits of leaf 'dense/kernel' must be integers in [2, 8], got 9.
  """
  if is_format(bits):
    if bits not in FORMATS:
      raise ValueError(f"Leaf '{path}': unknown float format {bits!r}; known: {sorted(FORMATS)}.")
    return
  if not tree_utils.is_concrete(bits):
    return
  values = np.asarray(bits)
  if (not np.issubdtype(values.dtype, np.integer)
      or np.any((values < MIN_BITS) | (values > MAX_BITS))):
    raise ValueError(f"bits of leaf '{path}' must be integers in [{MIN_BITS}, {MAX_BITS}], "
                     f"got {bits}.")


_KEEP = object()  # stands in for a ``None`` bits leaf while trees are compared


def _is_none(x: Any) -> bool:
  return x is None


def _given_leaves(params: tree_utils.Params, tree: Any, name: str) -> list[tuple[str, Any, Any]]:
  """``(path, param, leaf)`` for every leaf of ``tree`` (like ``params``, ``None`` leaves
  allowed) that is not ``None``."""
  marked = jax.tree.map(lambda b: _KEEP if b is None else b, tree, is_leaf=_is_none)
  tree_utils.check_same_structure(params, marked, names=("params", name), shapes=False)
  return [(path, x, b) for path, x, b in zip(tree_utils.path_names(params),
                                              jax.tree.leaves(params), jax.tree.leaves(marked))
          if b is not _KEEP]


def scheme_tree(params: tree_utils.Params, scheme: Any) -> Any:
  """A tree like ``params`` of :class:`Scheme` s: ``scheme`` at every leaf, or ``scheme``
  checked when it already is such a tree (e.g. :func:`impjax.structure.schemes`, one channel
  layout per kernel); ``ValueError`` naming the leaf that is not a :class:`Scheme`.

  Example:
    >>> scheme_tree({"w": jnp.ones(4)}, Scheme())
    {'w': Scheme(symmetric=True, channel_axes=(), group_size=None, group_axis=-2, convention='hawq')}
  """
  if isinstance(scheme, Scheme):
    return jax.tree.map(lambda _: scheme, params)
  tree_utils.check_same_structure(params, scheme, names=("params", "scheme"), shapes=False)
  for path, sc in zip(tree_utils.path_names(params), jax.tree.leaves(scheme)):
    if not isinstance(sc, Scheme):
      raise ValueError(f"scheme of leaf '{path}' must be a Scheme, got {type(sc).__name__}.")
  return scheme


def check_bits_tree(params: tree_utils.Params, bits: Any, scheme: Any) -> None:
  """Checks a bits tree against ``params`` (structure, values, scale shapes), naming leaves;
  ``scheme`` is a :class:`Scheme` or a tree of them (:func:`scheme_tree`).

  Example:
    >>> check_bits_tree({"w": jnp.ones(4)}, {"w": 3}, Scheme())
  """
  schemes = dict(zip(tree_utils.path_names(params), jax.tree.leaves(scheme_tree(params, scheme))))
  for path, x, b in _given_leaves(params, bits, "bits"):
    check_bits(path, b)
    if not is_format(b):
      shape = scale_shape(np.shape(x), schemes[path], path)
      if np.broadcast_shapes(np.shape(b), shape) != shape:
        raise ValueError(f"bits of leaf '{path}' have shape {np.shape(b)}, which does not "
                         f"broadcast to its scales' shape {shape}; per-channel bits need "
                         "per-channel scales on the same axis.")


def check_salient_tree(params: tree_utils.Params, salient: Any) -> Any:
  """Checks salient masks against ``params``, naming leaves: the same structure (``None``
  leaves: no salient values), bool masks that broadcast to their leaf's shape. Returns the
  masks with every ``None`` kept (a tree of ``None`` when ``salient`` is ``None``).

  Example:
    >>> check_salient_tree({"w": jnp.ones((4, 2))}, {"w": jnp.ones((3, 1), bool)})
    Traceback (most recent call last):
    ...
    ValueError: salient mask of leaf 'w' has shape (3, 1), which does not broadcast to the leaf's shape (4, 2).
  """
  if salient is None:
    return jax.tree.map(lambda _: None, params)
  for path, x, m in _given_leaves(params, salient, "salient"):
    if jnp.result_type(m) != jnp.bool_:
      raise ValueError(f"salient mask of leaf '{path}' must be bool, got {jnp.result_type(m)}.")
    tree_utils.check_broadcasts_leaf(path, np.shape(m), np.shape(x), what="salient mask")
  return salient

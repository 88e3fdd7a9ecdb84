"""Real quantized storage: integer arrays plus scales, int4 packed two per byte, byte counts,
and loading back to exactly the fake-quantized values.

``export`` stores every leaf with integer bits as a :class:`Packed`: the values quantized at
4 bits or fewer as uint8 bytes holding two 4-bit values each, the others as int8 (a leaf with
per-channel bits splits its channels between the two), float32 scales, int8 zero points when
asymmetric, and the int8 bits per scale. Leaves with a float format are stored as arrays of
that dtype, the others unchanged. With ``salient`` masks (PTQ1.61's salient input channels,
:func:`impjax.select.salient_channels`), the salient values are stored at ``salient_bits``
with their own scales, the mask kept as bits. ``load`` reverses it:
``load(export(p, bits, salient=m))`` equals ``impjax.transforms.fake_quant(p, bits,
salient=m)`` bit for bit. ``nbytes`` counts what is stored, masks and scales included.

References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (integer values with a scale and a zero point); Zhao et al.
2024, "PTQ1.61" (salient input channels at higher precision).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import quantization
  >>> params = {"kernel": jnp.ones((64, 8)), "bias": jnp.zeros(8)}
  >>> stored = quantization.export(params, {"kernel": 4, "bias": None})
  >>> quantization.nbytes(stored), quantization.nbytes(params)
  (293, 2080)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from impjax.quantization import numerics
from impjax import tree_utils

NIBBLE_BITS = 4  # values of at most this many bits are packed two per byte


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
  """One quantized array as stored.

  Attributes:
    nibbles: uint8 ``(ceil(m / 2),)``: the ``m`` values whose bits are at most 4, in row-major
      order, two per byte, low nibble first.
    wide: int8 ``(n - m,)``: the other values, in row-major order.
    scale: float32 scales (see :class:`impjax.quantization.Quantized`).
    zero_point: int8 zero points, or ``None`` when symmetric.
    bits: int8 bits per scale of the non-salient values (which of them are nibbles).
    shape: the array's shape (static).
    salient: ``None``, or uint8 bits of the salient mask (in its own shape, row-major, low
      bit first): those values are stored at ``salient_bits`` with their own scales.
    salient_scale: float32 scales of the salient values (like ``scale``), or ``None``.
    salient_zero_point: their int8 zero points, or ``None``.
    salient_bits: int8 scalar bits of the salient values, or ``None``.
    salient_shape: the salient mask's shape (static), or ``None``.

  Example:
    >>> p = export({"w": jnp.ones((3, 2))}, {"w": 4})["w"]
    >>> p.nibbles.shape, p.wide.shape, p.shape
    ((3,), (0,), (3, 2))
  """
  nibbles: jax.Array
  wide: jax.Array
  scale: jax.Array
  zero_point: jax.Array | None
  bits: jax.Array
  shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
  salient: jax.Array | None = None
  salient_scale: jax.Array | None = None
  salient_zero_point: jax.Array | None = None
  salient_bits: jax.Array | None = None
  salient_shape: tuple[int, ...] | None = dataclasses.field(default=None,
                                                            metadata={"static": True})


@jax.jit
def pack_int4(q: jax.Array) -> jax.Array:
  """Packs int values in [-8, 7] two per byte (two's complement nibbles, low nibble first).

  Example:
    >>> pack_int4(jnp.array([1, -1, 7], jnp.int8)).tolist()
    [241, 7]
  """
  flat = q.reshape(-1).astype(jnp.uint8) & 0xF
  flat = jnp.pad(flat, (0, flat.size % 2))
  return flat[0::2] | (flat[1::2] << 4)


@functools.partial(jax.jit, static_argnames=("size",))
def unpack_int4(data: jax.Array, size: int) -> jax.Array:
  """Inverse of :func:`pack_int4`: the first ``size`` int8 values.

  Example:
    >>> unpack_int4(jnp.array([241, 7], jnp.uint8), 3).tolist()
    [1, -1, 7]
  """
  nibbles = jnp.stack([data & 0xF, data >> 4], axis=-1).reshape(-1)[:size].astype(jnp.int8)
  return jnp.where(nibbles >= 8, nibbles - 16, nibbles).astype(jnp.int8)


_quantize = jax.jit(numerics.quantize, static_argnums=(2,))


def _narrow(bits: jax.Array, scale: jax.Array, shape: tuple[int, ...],
            salient: np.ndarray | None = None, salient_bits: int = 8) -> np.ndarray:
  """Flat bool mask of the values stored as nibbles (salient values have ``salient_bits``)."""
  per_scale = jnp.broadcast_to(jnp.asarray(bits, jnp.int8), scale.shape)
  width = np.asarray(numerics.expand(per_scale, shape))
  if salient is not None:
    width = np.where(np.broadcast_to(salient, shape), salient_bits, width)
  return width.reshape(-1) <= NIBBLE_BITS


def export(params: tree_utils.Params, bits: Any, scheme: Any = numerics.Scheme(),
           clip: Any = None, salient: Any = None, salient_bits: int = 8) -> Any:
  """Stores ``params`` quantized as ``bits`` (concrete) says.

  Args:
    params: float weights.
    bits: bits tree as for :func:`impjax.transforms.fake_quant` (concrete values).
    scheme: the quantization scheme, or a tree of them (:func:`impjax.structure.schemes`).
    clip: optional clip-ratio tree (e.g. from :func:`impjax.quantization.clip_ratios`).
    salient: optional tree like ``params`` of concrete bool masks that broadcast to their
      leaf (``None`` leaves: none), e.g. :func:`impjax.select.salient_channels`: those values
      are stored at ``salient_bits`` with their own scales, the others at the leaf's bits with
      scales computed without them, as in :func:`impjax.transforms.fake_quant`. Masks of
      leaves that are not stored as integers are ignored.
    salient_bits: bits of the salient values, in [2, 8] (at most 4: packed as nibbles).

  Returns:
    A tree like ``params``: :class:`Packed` for integer leaves, narrow float arrays for
    float-format leaves, the original array elsewhere.

  Example:
    >>> stored = export({"w": jnp.array([[1.5, -0.5], [0.1, 2.0]])}, {"w": jnp.array([[3, 8]])},
    ...                 numerics.Scheme(channel_axes=(-1,)))
    >>> stored["w"].nibbles.tolist(), stored["w"].wide.tolist()
    ([3], [-32, 127])
    >>> w = jnp.array([[0.5, -0.375], [127.0, 4.0], [0.125, 0.5]])  # input 1 is salient
    >>> stored = export({"w": w}, {"w": 2}, salient={"w": jnp.array([[False], [True], [False]])})
    >>> load(stored)["w"].tolist()
    [[0.5, -0.5], [127.0, 4.0], [0.0, 0.5]]
    >>> bytes_per_leaf(stored)  # 4 nibbles in 2 bytes, 2 int8, a mask byte, 2 scales, 2 bits
    {'w': 15}
  """
  numerics.check_bits_tree(params, bits, scheme)
  numerics.check_bits("salient_bits", salient_bits)
  clip = jax.tree.map(lambda _: None, params) if clip is None else clip
  salient = numerics.check_salient_tree(params, salient)
  schemes = numerics.scheme_tree(params, scheme)

  def leaf(path, x, b, c, s, scheme):
    if b is None:
      return x
    if numerics.is_format(b):
      return numerics.cast(x, b).astype(numerics.FORMATS[b])
    if not tree_utils.is_concrete(b) or not (s is None or tree_utils.is_concrete(s)):
      raise ValueError(f"export needs concrete bits and salient masks; leaf '{path}' has "
                       "traced ones.")
    c = 1.0 if c is None else c
    if s is None:
      qx, kept = _quantize(x, b, scheme, c), None
      q = qx.q
    else:
      s = np.asarray(s)
      zeros = jnp.zeros_like(x)
      qx = _quantize(jnp.where(s, zeros, x), b, scheme, c)
      kept = _quantize(jnp.where(s, x, zeros), salient_bits, scheme, c)
      q = jnp.where(s, kept.q, qx.q)
    narrow = _narrow(b, qx.scale, np.shape(x), s, salient_bits)
    flat = q.reshape(-1)
    packed = Packed(pack_int4(flat[narrow]), flat[~narrow], qx.scale, qx.zero_point,
                    jnp.broadcast_to(jnp.asarray(b, jnp.int8), qx.scale.shape),
                    tuple(np.shape(x)))
    if s is None:
      return packed
    return dataclasses.replace(
        packed, salient=jnp.packbits(jnp.asarray(s).reshape(-1), bitorder="little"),
        salient_scale=kept.scale, salient_zero_point=kept.zero_point,
        salient_bits=jnp.asarray(salient_bits, jnp.int8), salient_shape=tuple(np.shape(s)))
  return tree_utils.map_with_path(leaf, params, bits, clip, salient, schemes)


def _is_packed(x: Any) -> bool:
  return isinstance(x, Packed)


def _salient_mask(x: Packed) -> np.ndarray | None:
  """The salient mask of one :class:`Packed` in its own shape, or ``None``."""
  if x.salient is None:
    return None
  size = int(np.prod(x.salient_shape))
  bits = np.unpackbits(np.asarray(x.salient), count=size, bitorder="little")
  return bits.astype(bool).reshape(x.salient_shape)


def _unpacked(x: Packed) -> jax.Array:
  """Float32 values of one :class:`Packed`."""
  salient = _salient_mask(x)
  narrow = _narrow(x.bits, x.scale, x.shape, salient,
                   None if salient is None else int(x.salient_bits))
  q = jnp.zeros(narrow.shape, jnp.int8)
  q = q.at[np.flatnonzero(narrow)].set(unpack_int4(x.nibbles, int(narrow.sum())))
  q = q.at[np.flatnonzero(~narrow)].set(x.wide).reshape(x.shape)
  values = numerics.dequantize(numerics.Quantized(q, x.scale, x.zero_point))
  if salient is None:
    return values
  kept = numerics.dequantize(numerics.Quantized(q, x.salient_scale, x.salient_zero_point))
  return jnp.where(salient, kept, values)


def load(stored: Any) -> Any:
  """Float32 params from :func:`export`'s output (other leaves as float32 too).

  Example:
    >>> load(export({"w": jnp.array([1.5, -0.5, 0.1])}, {"w": 3}))["w"].tolist()
    [1.5, -0.5, 0.0]
  """
  return jax.tree.map(lambda x: _unpacked(x) if _is_packed(x) else jnp.asarray(x, jnp.float32),
                      stored, is_leaf=_is_packed)


def bytes_per_leaf(stored: Any) -> dict[str, int]:
  """Stored bytes of every leaf (a :class:`Packed` counts all its arrays: values, scales, zero
  points, bits, and the salient mask with its scales).

  Example:
    >>> bytes_per_leaf({"w": jnp.zeros(3), "q": export({"k": jnp.ones(4)}, {"k": 8})["k"]})
    {'q': 9, 'w': 12}
  """
  flat = jax.tree_util.tree_flatten_with_path(stored, is_leaf=_is_packed)[0]
  return {tree_utils.path_str(path): sum(int(np.asarray(a).nbytes) for a in jax.tree.leaves(x))
          for path, x in flat}


def nbytes(stored: Any) -> int:
  """Total stored bytes (float params count their own dtype's bytes).

  Example:
    >>> nbytes({"w": jnp.zeros(3, jnp.bfloat16)})
    6
  """
  return sum(bytes_per_leaf(stored).values())

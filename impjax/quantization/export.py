"""Real quantized storage: integer arrays plus scales, int4 packed two per byte, byte counts,
and loading back to exactly the fake-quantized values.

``export`` stores every leaf with integer bits as a :class:`Packed`: the values quantized at
4 bits or fewer as uint8 bytes holding two 4-bit values each, the others as int8 (a leaf with
per-channel bits splits its channels between the two), float32 scales, int8 zero points when
asymmetric, and the int8 bits per scale. Leaves with a float format are stored as arrays of
that dtype, the others unchanged. ``load`` reverses it: ``load(export(p, bits))`` equals
``impjax.transforms.fake_quant(p, bits)`` bit for bit. ``nbytes`` counts what is stored.

Reference: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (integer values with a scale and a zero point).

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

from impjax import transforms
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
    scale: float32 scales (see :class:`impjax.transforms.Quantized`).
    zero_point: int8 zero points, or ``None`` when symmetric.
    bits: int8 bits per scale (which values are nibbles).
    shape: the array's shape (static).

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


_quantize = jax.jit(transforms.quantize, static_argnums=(2,))


def _narrow(bits: jax.Array, scale: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
  """Flat bool mask of the values stored as nibbles."""
  per_scale = jnp.broadcast_to(jnp.asarray(bits, jnp.int8), scale.shape)
  return np.asarray(transforms.expand(per_scale, shape)).reshape(-1) <= NIBBLE_BITS


def export(params: Any, bits: Any, scheme: transforms.Scheme = transforms.Scheme(),
           clip: Any = None) -> Any:
  """Stores ``params`` quantized as ``bits`` (concrete) says.

  Args:
    params: float weights.
    bits: bits tree as for :func:`impjax.transforms.fake_quant` (concrete values).
    scheme: the quantization scheme.
    clip: optional clip-ratio tree (e.g. from :func:`impjax.quantization.calibrate`).

  Returns:
    A tree like ``params``: :class:`Packed` for integer leaves, narrow float arrays for
    float-format leaves, the original array elsewhere.

  Example:
    >>> stored = export({"w": jnp.array([[1.5, -0.5], [0.1, 2.0]])}, {"w": jnp.array([[3, 8]])},
    ...                 transforms.Scheme(channel_axes=(-1,)))
    >>> stored["w"].nibbles.tolist(), stored["w"].wide.tolist()
    ([3], [-32, 127])
  """
  transforms.check_bits_tree(params, bits, scheme)
  clip = jax.tree.map(lambda _: None, params) if clip is None else clip

  def leaf(path, x, b, c):
    if b is None:
      return x
    if transforms.is_format(b):
      return transforms.cast(x, b).astype(transforms.FORMATS[b])
    if not tree_utils.is_concrete(b):
      raise ValueError(f"export needs concrete bits; leaf '{path}' has traced bits.")
    qx = _quantize(x, b, scheme, 1.0 if c is None else c)
    narrow = _narrow(b, qx.scale, np.shape(x))
    flat = qx.q.reshape(-1)
    return Packed(pack_int4(flat[narrow]), flat[~narrow], qx.scale, qx.zero_point,
                  jnp.broadcast_to(jnp.asarray(b, jnp.int8), qx.scale.shape),
                  tuple(np.shape(x)))
  return tree_utils.map_with_path(leaf, params, bits, clip)


def _is_packed(x: Any) -> bool:
  return isinstance(x, Packed)


def _unpacked(x: Packed) -> jax.Array:
  """Float32 values of one :class:`Packed`."""
  narrow = _narrow(x.bits, x.scale, x.shape)
  q = jnp.zeros(narrow.shape, jnp.int8)
  q = q.at[np.flatnonzero(narrow)].set(unpack_int4(x.nibbles, int(narrow.sum())))
  q = q.at[np.flatnonzero(~narrow)].set(x.wide).reshape(x.shape)
  return transforms.dequantize(transforms.Quantized(q, x.scale, x.zero_point))


def load(stored: Any) -> Any:
  """Float32 params from :func:`export`'s output (other leaves as float32 too).

  Example:
    >>> load(export({"w": jnp.array([1.5, -0.5, 0.1])}, {"w": 3}))["w"].tolist()
    [1.5, -0.5, 0.0]
  """
  return jax.tree.map(lambda x: _unpacked(x) if _is_packed(x) else jnp.asarray(x, jnp.float32),
                      stored, is_leaf=_is_packed)


def bytes_per_leaf(stored: Any) -> dict[str, int]:
  """Stored bytes of every leaf (a :class:`Packed` counts all its arrays).

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

"""Tests for impjax.quantization.export: int4 packing against a nibble formula, bytes against the
storage formula, and loading back to exactly the fake-quantized values and model outputs."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from conftest import mlp_with_bits
from impjax import quantization
from impjax import transforms
from impjax.transforms import Scheme


def test_pack_int4_matches_nibble_formula_and_round_trips():
  q = np.array(list(range(-8, 8)) + [3, -5, 7], np.int8)  # odd length: one padding nibble
  packed = np.asarray(quantization.pack_int4(jnp.asarray(q)))
  nibbles = np.append(q.astype(np.int16) & 0xF, 0)
  np.testing.assert_array_equal(packed, (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8))
  assert packed.dtype == np.uint8 and packed.size == 10
  np.testing.assert_array_equal(quantization.unpack_int4(jnp.asarray(packed), q.size), q)


W = np.random.default_rng(0).standard_normal((24, 6)).astype(np.float32)
PARAMS = {"dense": {"kernel": jnp.asarray(W), "bias": jnp.asarray(W[0])},
          "head": {"kernel": jnp.asarray(W[:6, :4] * 100)}}


def expected_bytes(n, scales, bits, symmetric):
  """Values (two per byte at <= 4 bits), float32 scales, int8 bits and zero points per scale."""
  values = -(-n // 2) if bits <= 4 else n
  return values + 4 * scales + scales + (0 if symmetric else scales)


@pytest.mark.parametrize("scheme", [Scheme(), Scheme(channel_axes=(-1,)),
                                    Scheme(False, (-1,), 4), Scheme(False)],
                         ids=["tensor", "channel", "asym_grouped", "asym_tensor"])
def test_export_load_equals_fake_quant_and_bytes_match(scheme):
  scales = int(np.prod(transforms.scale_shape((24, 6), scheme)))
  for bits in (2, 3, 4, 5, 8):
    tree_bits = {"dense": {"kernel": bits, "bias": None}, "head": {"kernel": "bfloat16"}}
    stored = quantization.export(PARAMS, tree_bits, scheme)
    loaded = quantization.load(stored)
    want = transforms.fake_quant(PARAMS, tree_bits, scheme)
    for got, ref in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    kernel = stored["dense"]["kernel"]
    assert kernel.nibbles.dtype == jnp.uint8 and kernel.wide.dtype == jnp.int8
    assert (kernel.nibbles.size, kernel.wide.size) == ((72, 0) if bits <= 4 else (0, 144))
    assert stored["head"]["kernel"].dtype == jnp.bfloat16
    per_leaf = quantization.bytes_per_leaf(stored)
    assert per_leaf["dense/kernel"] == expected_bytes(W.size, scales, bits, scheme.symmetric)
    assert per_leaf == {"dense/bias": 24, "dense/kernel": per_leaf["dense/kernel"],
                        "head/kernel": 48}
    assert quantization.nbytes(stored) == sum(per_leaf.values())


def test_per_channel_bits_clip_and_fp8_storage():
  scheme = Scheme(channel_axes=(-1,))
  bits = {"dense": {"kernel": jnp.array([[2, 3, 4, 4, 3, 2]]), "bias": "float8_e5m2"},
          "head": {"kernel": jnp.array([[8, 5, 2, 6]])}}
  clip = {"dense": {"kernel": jnp.full((1, 6), 0.8), "bias": None}, "head": {"kernel": None}}
  stored = quantization.export(PARAMS, bits, scheme, clip)
  assert stored["dense"]["kernel"].wide.size == 0
  # head/kernel (6, 4): channel 2 (2 bits) packs its 6 values in 3 bytes, 18 values are int8.
  assert (stored["head"]["kernel"].nibbles.size, stored["head"]["kernel"].wide.size) == (3, 18)
  assert stored["dense"]["bias"].dtype == ml_dtypes.float8_e5m2
  loaded = quantization.load(stored)
  want = transforms.fake_quant(PARAMS, bits, scheme, clip)
  for got, ref in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  assert quantization.bytes_per_leaf(stored)["head/kernel"] == 3 + 18 + 4 * 4 + 4
  assert quantization.bytes_per_leaf(stored)["dense/bias"] == 6


def test_loaded_model_reproduces_fake_quant_outputs():
  graphdef, params, bits = mlp_with_bits(64, 32, 10, 4, 8)
  scheme = Scheme(channel_axes=(-1,))
  x = jnp.asarray(np.random.default_rng(1).random((16, 8, 8, 1)), jnp.float32)
  apply = jax.jit(lambda p: nnx.merge(graphdef, p)(x))
  stored = quantization.export(params, bits, scheme)
  np.testing.assert_array_equal(np.asarray(apply(quantization.load(stored))),
                                np.asarray(apply(transforms.fake_quant(params, bits, scheme))))
  float_bytes = quantization.nbytes(params)
  # 64*32 int4 values + 32 scales and bits, 32*10 int8 values + 10 scales and bits, float
  # biases (32 + 10).
  assert quantization.nbytes(stored) == 1024 + 160 + 320 + 50 + 4 * 42
  assert float_bytes == 4 * (64 * 32 + 32 + 32 * 10 + 10)


def test_export_errors():
  with pytest.raises(ValueError, match="concrete bits.*'w'"):
    jax.jit(lambda b: quantization.export({"w": jnp.ones(4)}, {"w": b}))(jnp.int32(4))
  with pytest.raises(ValueError, match=r"leaf 'w'.*\[2, 8\]"):
    quantization.export({"w": jnp.ones(4)}, {"w": 16})

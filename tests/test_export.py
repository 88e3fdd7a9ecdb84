"""Tests for impjax.quantization.export: int4 packing against a nibble formula, bytes against the
storage formula, and loading back to exactly the fake-quantized values and model outputs, with
and without salient input channels."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from impjax import groups
from impjax import quantization
from impjax import select
from impjax import transforms
from impjax.quantization import Scheme
from tests.helpers import mlp_with_bits


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
  scales = int(np.prod(quantization.scale_shape((24, 6), scheme)))
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


# Input channels 3, 7 and 20 of dense/kernel are salient (from their squared magnitudes).
PLAN = groups.plan(PARAMS, [(r"kernel$", groups.element())])
SALIENT = select.salient_channels(jax.tree.map(jnp.square, PARAMS), PLAN, 0.125)


@pytest.mark.parametrize("scheme", [Scheme(channel_axes=(-1,)), Scheme(False, (-1,), 4)],
                         ids=["channel", "asym_grouped"])
def test_salient_export_load_equals_fake_quant_and_bytes_match(scheme):
  salient_rows = np.flatnonzero(np.asarray(SALIENT["dense"]["kernel"]))
  assert SALIENT["dense"]["kernel"].shape == (24, 1) and salient_rows.size == 3
  scales = int(np.prod(quantization.scale_shape((24, 6), scheme)))
  quant = jax.jit(lambda p, s, b, sb: transforms.fake_quant(  # traced bits: one compilation
      p, {"dense": {"kernel": b, "bias": None}, "head": {"kernel": "bfloat16"}}, scheme, None,
      s, sb))
  for bits, salient_bits in ((2, 8), (4, 8), (5, 8), (3, 4)):
    # head/kernel's mask is ignored: a float format is not stored as integers.
    tree_bits = {"dense": {"kernel": bits, "bias": None}, "head": {"kernel": "bfloat16"}}
    stored = quantization.export(PARAMS, tree_bits, scheme, salient=SALIENT,
                                 salient_bits=salient_bits)
    loaded = quantization.load(stored)
    eager = transforms.fake_quant(PARAMS, tree_bits, scheme, salient=SALIENT,
                                  salient_bits=salient_bits)
    jitted = quant(PARAMS, SALIENT, jnp.int32(bits), jnp.int32(salient_bits))
    for got, ref, ref_jit in zip(*map(jax.tree.leaves, (loaded, eager, jitted))):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
      np.testing.assert_array_equal(np.asarray(got), np.asarray(ref_jit))
    # By hand: 3 salient rows x 6 outputs at salient_bits, 21 x 6 at bits; int4 packs two per
    # byte; two sets of float32 scales (and int8 zero points when asymmetric), int8 bits per
    # scale plus one for the salient values, and the (24, 1) mask as 3 bytes.
    kernel = stored["dense"]["kernel"]
    narrow = (126 if bits <= 4 else 0) + (18 if salient_bits <= 4 else 0)
    assert (kernel.nibbles.size, kernel.wide.size) == (-(-narrow // 2), 144 - narrow)
    value_bytes = -(-narrow // 2) + 144 - narrow
    zero_points = 0 if scheme.symmetric else 2 * scales
    assert quantization.bytes_per_leaf(stored)["dense/kernel"] == (
        value_bytes + 2 * 4 * scales + zero_points + scales + 1 + 3)
    if (bits, salient_bits) == (4, 8):  # the values' storage is select.average_bits' count
      assert 8 * value_bytes == 144 * select.average_bits(
          {"k": 4}, {"k": PARAMS["dense"]["kernel"]}, {"k": SALIENT["dense"]["kernel"]}, 8)
  assert quantization.export(PARAMS, tree_bits, scheme)["dense"]["kernel"].salient is None


def test_salient_mask_errors_name_the_leaf():
  bits = {"dense": {"kernel": 4, "bias": None}, "head": {"kernel": 4}}
  bad_shape = {**SALIENT, "dense": {"kernel": jnp.ones((23, 1), bool), "bias": None}}
  for fn in (quantization.export, transforms.fake_quant):
    with pytest.raises(ValueError, match=r"salient mask of leaf 'dense/kernel' has shape "
                                         r"\(23, 1\).*\(24, 6\)"):
      fn(PARAMS, bits, salient=bad_shape)
  with pytest.raises(ValueError, match=r"salient mask of leaf 'head/kernel' has shape "
                                       r"\(2, 6, 4\)"):
    quantization.export(PARAMS, bits, salient={**SALIENT, "head": {"kernel": jnp.ones((2, 6, 4),
                                                                                       bool)}})
  with pytest.raises(ValueError, match=r"salient mask of leaf 'dense/kernel' must be bool"):
    quantization.export(PARAMS, bits, salient={**SALIENT, "dense": {"kernel": jnp.ones((24, 1)),
                                                                     "bias": None}})
  with pytest.raises(ValueError, match="concrete bits and salient masks; leaf 'dense/kernel'"):
    jax.jit(lambda s: quantization.export(PARAMS, bits, salient=s))(SALIENT)
  with pytest.raises(ValueError, match=r"leaf 'salient_bits'.*\[2, 8\]"):
    quantization.export(PARAMS, bits, salient=SALIENT, salient_bits=16)

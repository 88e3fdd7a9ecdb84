"""Tests for impjax.transforms.fake_quant: quantizers against a numpy loop, bit for bit, eager and
jitted; casting against ml_dtypes; the straight-through estimator; errors; qwix's numerics."""

import itertools

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from impjax import transforms
from impjax.quantization import Scheme
from impjax import quantization

F32 = np.float32
TINY_SQRT = np.sqrt(np.finfo(np.float32).tiny)


def np_fake_quant(x, bits, scheme, clip=1.0):
  """Reference: a loop over scale groups in float32 numpy, following the documented formulas.

  Symmetric: ``scale = absmax * clip * (1 / bound)`` with ``bound = 2^(b-1) - 1`` ("hawq") or
  ``2^(b-1) - 0.5`` ("qwix"). Asymmetric: ``scale = (max*clip - min*clip) * (1 / (2^b - 1))``
  with ``min <= 0 <= max`` and ``zp = clip(round(qmin - min*clip / scale))``. Values are
  ``round(x * (1 / scale))`` (a true division when every value has its own scale), clipped to
  ``[-2^(b-1), 2^(b-1) - 1]``; dequantized as ``(q - zp) * scale``.
  """
  x = np.asarray(x, F32)
  nd = x.ndim
  chans = {a % nd for a in scheme.channel_axes}
  gax = None if scheme.group_size is None else scheme.group_axis % nd
  gs = scheme.group_size
  sshape = tuple(d if a in chans else (d // gs if a == gax else 1) for a, d in enumerate(x.shape))
  bits = np.broadcast_to(np.asarray(bits), sshape)
  clip = np.broadcast_to(np.asarray(clip, F32), sshape)
  own_scales = int(np.prod(sshape)) == x.size
  out = np.empty_like(x)
  for idx in np.ndindex(*sshape):
    sl = []
    for a, i in enumerate(idx):
      if sshape[a] == 1 and x.shape[a] != 1:
        sl.append(slice(None))
      elif a == gax:
        sl.append(slice(i * gs, (i + 1) * gs))
      else:
        sl.append(slice(i, i + 1))
    v = x[tuple(sl)]
    b = int(bits[idx])
    c = F32(clip[idx])
    qmin, qmax = F32(-(2 ** (b - 1))), F32(2 ** (b - 1) - 1)
    if scheme.symmetric:
      bound = qmax + F32(0.5) if scheme.convention == "qwix" else qmax
      s = F32(np.max(np.abs(v))) * c * (F32(1) / bound)
      s = F32(1) if s < TINY_SQRT else s
      z = F32(0)
    else:
      lo, hi = min(F32(np.min(v)), F32(0)), max(F32(np.max(v)), F32(0))
      s = (hi * c - lo * c) * (F32(1) / (qmax - qmin))
      s = F32(1) if s < TINY_SQRT else s
      z = np.clip(np.round(qmin - (lo * c) / s), qmin, qmax)
    shifted = v / s if own_scales else v * (F32(1) / s)
    q = np.clip(np.round(shifted + z), qmin, qmax)
    out[tuple(sl)] = (q - z) * s
  return out


X = np.random.default_rng(0).standard_normal((16, 8)).astype(F32)
SCHEMES = [
    Scheme(),
    Scheme(channel_axes=(-1,)),
    Scheme(channel_axes=(-1,), group_size=4),
    Scheme(group_size=8, group_axis=0),
    Scheme(channel_axes=(0, 1)),
]


@pytest.mark.parametrize("convention", ["hawq", "qwix"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: f"ch{s.channel_axes}g{s.group_size}")
def test_fake_quant_equals_numpy_reference_bit_for_bit(scheme, symmetric, convention):
  scheme = Scheme(symmetric, scheme.channel_axes, scheme.group_size, scheme.group_axis,
                  convention)
  jitted = jax.jit(lambda x, b: quantization.fake_quant_array(x, b, scheme))
  for bits in range(2, 9):
    want = np_fake_quant(X, bits, scheme)
    eager = np.asarray(quantization.fake_quant_array(jnp.asarray(X), bits, scheme))
    np.testing.assert_array_equal(eager, want, err_msg=f"bits={bits}")
    np.testing.assert_array_equal(np.asarray(jitted(X, bits)), want, err_msg=f"jit bits={bits}")


def test_quantize_conv_kernel_grouped_contraction_axis():
  x = np.random.default_rng(1).standard_normal((3, 3, 8, 4)).astype(F32)
  scheme = Scheme(channel_axes=(-1,), group_size=4)  # groups along -2, the input channels
  got = quantization.quantize(jnp.asarray(x), 3, scheme)
  assert got.q.dtype == jnp.int8 and got.scale.shape == (1, 1, 2, 4)
  np.testing.assert_array_equal(np.asarray(quantization.dequantize(got)), np_fake_quant(x, 3, scheme))


def test_quantize_by_hand_both_conventions():
  x = jnp.array([1.0, -1.0, 0.3])
  hawq = quantization.quantize(x, 4)
  np.testing.assert_array_equal(hawq.scale, [F32(1.0) * (F32(1) / F32(7))])
  assert hawq.q.tolist() == [7, -7, 2] and hawq.zero_point is None
  qwix_like = quantization.quantize(x, 4, Scheme(convention="qwix"))
  np.testing.assert_array_equal(qwix_like.scale, [F32(1) / F32(7.5)])
  assert qwix_like.q.tolist() == [7, -7, 2]
  asym = quantization.quantize(jnp.array([0.0, 1.5, 3.0]), 2, Scheme(symmetric=False))
  # scale = 3/3 = 1, zero point = round(-2 - 0) = -2: q = x - 2.
  assert asym.scale.tolist() == [1.0] and asym.zero_point.tolist() == [-2]
  assert asym.q.tolist() == [-2, 0, 1]  # 1.5 - 2 = -0.5 rounds half to even: 0


def test_per_channel_bits_and_clip_match_reference():
  scheme = Scheme(channel_axes=(-1,))
  bits = np.array([[2, 3, 4, 5, 6, 7, 8, 8]])
  clip = np.linspace(0.5, 1.0, 8, dtype=F32).reshape(1, 8)
  want = np_fake_quant(X, bits, scheme, clip)
  got = quantization.fake_quant_array(jnp.asarray(X), jnp.asarray(bits), scheme, jnp.asarray(clip))
  np.testing.assert_array_equal(np.asarray(got), want)
  jitted = jax.jit(lambda x, b, c: quantization.fake_quant_array(x, b, scheme, c))(X, bits, clip)
  np.testing.assert_array_equal(np.asarray(jitted), want)


def test_all_zero_channel_uses_scale_one():
  x = jnp.zeros((4, 2)).at[:, 1].set(jnp.array([1.0, -1.0, 0.5, 0.0]))
  q = quantization.quantize(x, 3, Scheme(channel_axes=(-1,)))
  assert q.scale.tolist()[0][0] == 1.0
  np.testing.assert_array_equal(np.asarray(quantization.dequantize(q))[:, 0], 0.0)


def test_straight_through_gradient_and_exact_forward():
  x = jnp.asarray(X)
  scheme = Scheme(channel_axes=(-1,))
  weights = jnp.arange(X.size, dtype=jnp.float32).reshape(X.shape)
  grad = jax.grad(lambda v: jnp.sum(quantization.fake_quant_array(v, 3, scheme) * weights))(x)
  np.testing.assert_array_equal(grad, weights)
  np.testing.assert_array_equal(quantization.ste(x, 2 * x), 2 * x)
  assert float(jax.grad(lambda v: quantization.ste(v, jnp.round(v)))(0.3)) == 1.0


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_cast_equals_ml_dtypes_bit_for_bit(name):
  dtype = getattr(ml_dtypes, name)
  x = np.concatenate([X.ravel() * 100, X.ravel() * 1e-3, [1e6, -1e6, 0.0]]).astype(F32)
  info = ml_dtypes.finfo(dtype)
  want = np.clip(x, F32(info.min), F32(info.max)).astype(dtype).astype(F32)
  np.testing.assert_array_equal(np.asarray(quantization.cast(jnp.asarray(x), name)), want)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: quantization.cast(v, name))(x)), want)
  assert float(jax.grad(lambda v: jnp.sum(quantization.cast(v, name)))(jnp.asarray(x))[0]) == 1.0


def test_cast_saturates_instead_of_nan():
  got = quantization.cast(jnp.array([1000.0, -1000.0]), "float8_e4m3fn")
  assert got.tolist() == [448.0, -448.0]


def test_fake_quant_tree_none_formats_and_traced_bits():
  params = {"a": jnp.asarray(X), "b": jnp.asarray(X[0]), "c": jnp.asarray(X[1] * 1000)}
  bits = {"a": jnp.array([[2, 3, 4, 5, 6, 7, 8, 8]]), "b": None, "c": "float8_e4m3fn"}
  scheme = Scheme(channel_axes=(-1,))
  got = transforms.fake_quant(params, bits, scheme)
  np.testing.assert_array_equal(got["a"], np_fake_quant(X, np.asarray(bits["a"]), scheme))
  np.testing.assert_array_equal(got["b"], X[0])
  np.testing.assert_array_equal(got["c"], quantization.cast(params["c"], "float8_e4m3fn"))
  jitted = jax.jit(lambda p, a: transforms.fake_quant(p, {**bits, "a": a}, scheme))(params,
                                                                                    bits["a"])
  chex.assert_trees_all_equal(jitted, got)


def test_salient_values_get_their_own_precision_and_scales():
  salient = np.zeros((16, 1), bool)
  salient[[2, 9]] = True
  scheme = Scheme(channel_axes=(-1,))
  x = X.copy()
  x[2] *= 50  # an outlier input channel: kept salient, it must not inflate the other scales
  got = np.asarray(quantization.fake_quant_array(jnp.asarray(x), 2, scheme,
                                               salient=jnp.asarray(salient), salient_bits=8))
  rest = np.where(salient, 0, x)
  keep = np.where(salient, x, 0)
  want = np.where(salient, np_fake_quant(keep, 8, scheme), np_fake_quant(rest, 2, scheme))
  np.testing.assert_array_equal(got, want)


def test_errors_name_the_leaf():
  params = {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}
  with pytest.raises(ValueError, match=r"dense/kernel.*\[2, 8\], got 9"):
    transforms.fake_quant(params, {"dense": {"kernel": 9, "bias": None}})
  with pytest.raises(ValueError, match=r"dense/kernel.*\[2, 8\], got 1"):
    transforms.fake_quant(params, {"dense": {"kernel": 1, "bias": None}})
  with pytest.raises(ValueError, match=r"dense/kernel.*integers"):
    transforms.fake_quant(params, {"dense": {"kernel": 4.0, "bias": None}})
  with pytest.raises(ValueError, match=r"dense/kernel.*unknown float format"):
    transforms.fake_quant(params, {"dense": {"kernel": "float16", "bias": None}})
  with pytest.raises(ValueError, match=r"missing in bits: \['dense/bias'\]"):
    transforms.fake_quant(params, {"dense": {"kernel": 4}})
  with pytest.raises(ValueError, match=r"group_size 3 does not divide.*'dense/kernel'"):
    transforms.fake_quant(params, {"dense": {"kernel": 4, "bias": None}}, Scheme(group_size=3))
  with pytest.raises(ValueError, match=r"bits of leaf 'dense/kernel' have shape \(1, 2\)"):
    transforms.fake_quant(params, {"dense": {"kernel": jnp.array([[2, 4]]), "bias": None}})
  with pytest.raises(ValueError, match=r"'dense/bias'.*no channel axis -2"):
    transforms.fake_quant(params, {"dense": {"kernel": None, "bias": 4}},
                          Scheme(channel_axes=(-2,)))
  with pytest.raises(ValueError, match="convention"):
    Scheme(convention="aqt")
  with pytest.raises(ValueError, match="cast supports"):
    quantization.cast(jnp.ones(2), jnp.float16)


QWIX_CASES = [(qtype, bits, sym) for qtype, bits in
              [(jnp.int8, 8), (jnp.int4, 4), ("int2", 2), ("int3", 3), ("int6", 6)]
              for sym in (True, False) if sym or bits in (4, 8)]
QWIX_LAYOUTS = [((), None, None), ((1,), None, None), ((1,), {0: 16}, 16), ((), {0: 8}, 8)]


@pytest.mark.slow  # over ~10 s
def test_equals_qwix_for_shared_schemes():
  """qwix's fake quantization (quantize then dequantize, jitted) equals ours with
  ``convention="qwix"`` bit for bit: int2..int8 symmetric, int4/int8 asymmetric (qwix's only
  asymmetric types), per-tensor, per-channel and tiled (grouped) scales.

  qwix run eagerly computes a per-tensor scale ``absmax / 127.5`` as a true division, while
  under ``jit`` (how models run) XLA turns it into ``absmax * (1 / 127.5)``; ours always does
  the latter, so it is compared with jitted qwix.
  """
  qwix = pytest.importorskip("qwix")
  x = jnp.asarray(np.random.default_rng(3).standard_normal((64, 16)).astype(F32))
  cases = list(itertools.product(QWIX_CASES, QWIX_LAYOUTS))

  @jax.jit
  def theirs_all(v):  # one compilation for every case
    return [qwix.dequantize(qwix.quantize(v, qtype, channelwise_axes=channels, tiled_axes=tiles,
                                          calibration_method="absmax" if sym else "minmax"))
            for (qtype, _, sym), (channels, tiles, _) in cases]

  for ((qtype, bits, sym), (channels, tiles, group)), theirs in zip(cases, theirs_all(x)):
    ours = quantization.fake_quant_array(x, bits, Scheme(sym, channels, group, 0, "qwix"))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs),
                                  err_msg=f"{qtype} symmetric={sym} {channels} {tiles}")

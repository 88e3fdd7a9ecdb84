"""Tests for QAT (impjax.transforms.quantized in a train step) and PTQ (impjax.quantization:
importance-weighted clip calibration, squared errors and HAWQ tables), against numpy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from impjax import groups
from impjax import quantization
from impjax import scores
from impjax.flax import training
from impjax import transforms
from impjax.quantization import Scheme
from tests.helpers import eager_and_jit, mlp_with_bits

SCHEME = Scheme(channel_axes=(-1,))


def test_quantized_value_and_straight_through_gradient():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32), "b": jnp.ones(3)}
  x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  bits = {"w": 3, "b": None}

  def loss(scale, p, inputs):  # params are the second argument
    return scale * jnp.sum(jnp.tanh(inputs @ p["w"] + p["b"]) ** 2)

  qloss = transforms.quantized(loss, bits, SCHEME, argnum=1)
  qparams = transforms.fake_quant(params, bits, SCHEME)
  assert float(qloss(2.0, params, x)) == pytest.approx(float(loss(2.0, qparams, x)), rel=1e-6)
  # STE: the gradient w.r.t. the float params is the loss gradient at the quantized params.
  chex.assert_trees_all_close(jax.grad(qloss, argnums=1)(2.0, params, x),
                              jax.grad(loss, argnums=1)(2.0, qparams, x), rtol=1e-6)
  eager_and_jit(qloss, 2.0, params, x, rtol=1e-6)
  with pytest.raises(ValueError, match="positional argument 1"):
    qloss(2.0)


def test_qat_train_step_across_steps_matches_manual_updates():
  graphdef, params, bits = mlp_with_bits(16, 8, 3, 4, 3)
  tx = optax.adamw(1e-2)
  loss_fn = transforms.quantized(training.cross_entropy, bits, SCHEME, argnum=1)
  step = training.make_train_step(graphdef, tx, loss_fn=loss_fn)
  rng = np.random.default_rng(1)
  batches = [{"image": jnp.asarray(rng.random((8, 4, 4, 1)), jnp.float32),
              "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)} for _ in range(3)]
  @jax.jit
  def reference(ref_p, ref_s, batch):  # STE by hand: gradient at the quantized params
    quantized = transforms.fake_quant(ref_p, bits, SCHEME)
    (loss, _), grads = jax.value_and_grad(
        lambda q: training.cross_entropy(graphdef, q, batch), has_aux=True)(quantized)
    updates, ref_s = tx.update(grads, ref_s, ref_p)
    return optax.apply_updates(ref_p, updates), ref_s, loss

  p, s = params, tx.init(params)
  ref_p, ref_s = params, tx.init(params)
  for batch in batches:
    p, s, metrics = step(p, s, batch)
    ref_p, ref_s, loss = reference(ref_p, ref_s, batch)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    chex.assert_trees_all_close(p, ref_p, rtol=1e-5, atol=1e-6)
  assert not np.allclose(p["head"]["kernel"], params["head"]["kernel"])


def np_output_error(w, w_hat, gram):
  d = (np.asarray(w_hat, np.float64) - np.asarray(w, np.float64)).reshape(-1, w.shape[-1])
  return np.array([d[:, j] @ np.asarray(gram, np.float64) @ d[:, j] for j in range(d.shape[1])])


def test_output_error_matches_numpy():
  rng = np.random.default_rng(2)
  w, w_hat = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 3, 4))
  g = rng.standard_normal((12, 12))
  g = g @ g.T
  got = quantization.output_error(jnp.asarray(w), jnp.asarray(w_hat), jnp.asarray(g))
  np.testing.assert_allclose(got, np_output_error(w, w_hat, g), rtol=1e-4)
  np.testing.assert_allclose(jax.jit(quantization.output_error)(w, w_hat, g), got, rtol=1e-6)


@pytest.mark.parametrize("scheme", [SCHEME, Scheme()], ids=["per_channel", "per_tensor"])
def test_calibrate_clip_minimizes_the_importance_weighted_output_error(scheme):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((200, 8)).astype(np.float32)
  x[:20] *= 4  # a few important tokens with larger inputs
  weights = np.where(np.arange(200) < 20, 5.0, 1.0).astype(np.float32)  # RSQ-style weights
  w = rng.standard_normal((8, 5)).astype(np.float32)
  w[0, :] *= 6  # outliers make clipping worthwhile
  gram = scores.means(scores.token_gram(jnp.asarray(x), jnp.asarray(weights)))["gram"]
  np.testing.assert_allclose(gram, (x.T * weights) @ x / weights.sum(), rtol=1e-5)
  ratios = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
  eager = eager_and_jit(lambda k, g: quantization.clip_ratio(k, 3, g, scheme, ratios),
                        jnp.asarray(w), gram)
  errors = np.stack([np_output_error(w, quantization.fake_quant_array(jnp.asarray(w), 3, scheme, r),
                                     np.asarray(gram)) for r in ratios])
  if scheme.channel_axes:
    want = np.asarray(ratios, np.float32)[np.argmin(errors, axis=0)].reshape(1, 5)
  else:
    want = np.asarray(ratios, np.float32)[np.argmin(errors.sum(1))].reshape(1, 1)
  np.testing.assert_array_equal(eager, want)
  assert np.any(np.asarray(eager) < 1.0)


def test_calibrate_tree_and_errors():
  rng = np.random.default_rng(4)
  params = {"d": {"kernel": jnp.asarray(rng.standard_normal((6, 2)), jnp.float32),
                  "bias": jnp.zeros(2)}}
  bits = {"d": {"kernel": 2, "bias": None}}
  grams = {"d": {"kernel": jnp.eye(6), "bias": None}}
  clip = quantization.clip_ratios(params, bits, grams, SCHEME)
  assert clip["d"]["bias"] is None
  chex.assert_trees_all_equal(clip["d"]["kernel"], quantization.clip_ratio(
      params["d"]["kernel"], 2, jnp.eye(6), SCHEME))
  with pytest.raises(ValueError, match=r"Leaf 'd/kernel'.*gram of its 6 contraction inputs"):
    quantization.clip_ratios(params, bits, {"d": {"kernel": jnp.eye(5), "bias": None}}, SCHEME)
  with pytest.raises(ValueError, match=r"missing in grams"):
    quantization.clip_ratios(params, bits, {"d": {"kernel": jnp.eye(6)}}, SCHEME)


def test_squared_errors_and_hawq_table_match_numpy():
  rng = np.random.default_rng(5)
  params = {"k": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32), "bias": jnp.ones(3)}
  plan = groups.plan(params, [("k", groups.neurons(-1))])
  choices = (2, 4, "bfloat16")
  errs = quantization.squared_errors(params, choices, plan, SCHEME)
  k = params["k"]
  want = [(quantization.fake_quant_array(k, 2, SCHEME) - k) ** 2,
          (quantization.fake_quant_array(k, 4, SCHEME) - k) ** 2,
          (k.astype(jnp.bfloat16).astype(jnp.float32) - k) ** 2]
  for e, w in zip(errs, want):
    np.testing.assert_array_equal(e["k"], w)
    np.testing.assert_array_equal(e["bias"], 0.0)
  hdiag = {"k": jnp.asarray(rng.random((6, 3)), jnp.float32), "bias": jnp.ones(3)}
  table = eager_and_jit(lambda p, h: quantization.hawq_table(p, h, choices, plan, SCHEME),
                        params, hdiag, rtol=1e-6)
  h = np.asarray(hdiag["k"], np.float64)
  ref = np.stack([h.sum(0) / 6 * np.asarray(w, np.float64).sum(0) for w in want], axis=1)
  np.testing.assert_allclose(table["k"], ref, rtol=1e-5)
  assert table["bias"].shape == (0, 3)
  with pytest.raises(ValueError, match="choices.*got 1"):
    quantization.hawq_table(params, hdiag, (1, 4), plan, SCHEME)

"""Tests for impjax.quantization.output_error_table: the layer-output error of every candidate
precision against a hand-written numpy loop, eager and jitted, with full and diagonal input
moments, per-layer and per-output-channel units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import quantization

SCHEME = quantization.Scheme(channel_axes=(-1,))
CHOICES = (2, 4, 8)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 6)).astype(np.float32) * np.linspace(0.2, 3.0, 6, dtype=np.float32)
PARAMS = {"a": {"kernel": jnp.asarray(RNG.standard_normal((6, 5)), jnp.float32),
                "bias": jnp.zeros(5)},
          "b": {"kernel": jnp.asarray(RNG.standard_normal((6, 3)), jnp.float32)}}
GRAM = X.T @ X / len(X)


def numpy_table(kernel, moment, unit_axis_sum):
  """Per output column ``mean_t (x_t . d_j)^2`` by explicit loops, then per-unit sums."""
  kernel = np.asarray(kernel)
  cols = []
  for b in CHOICES:
    d = np.asarray(quantization.fake_quant_array(jnp.asarray(kernel), b, SCHEME)) - kernel
    per_out = np.zeros(kernel.shape[1])
    for j in range(kernel.shape[1]):
      if moment.ndim == 2:
        per_out[j] = np.mean([(x @ d[:, j]) ** 2 for x in X])
      else:
        per_out[j] = sum(moment[i] * d[i, j] ** 2 for i in range(kernel.shape[0]))
    cols.append(per_out.sum(keepdims=True) if unit_axis_sum else per_out)
  return np.stack(cols, -1)


@pytest.mark.parametrize("granularity", ["leaf", "neurons"])
@pytest.mark.parametrize("diagonal", [False, True])
def test_output_error_table_matches_numpy_eager_and_jit(granularity, diagonal):
  unit = groups.leaf() if granularity == "leaf" else groups.neurons(-1)
  plan = groups.plan(PARAMS, [(r"kernel$", unit)])
  moment = np.diag(GRAM).copy() if diagonal else GRAM
  moments = {"a": {"kernel": jnp.asarray(moment), "bias": None},
             "b": {"kernel": jnp.asarray(moment)}}
  fn = lambda p, m: quantization.output_error_table(p, m, CHOICES, plan, SCHEME)
  eager, jitted = fn(PARAMS, moments), jax.jit(fn)(PARAMS, moments)
  for name in ("a", "b"):
    want = numpy_table(PARAMS[name]["kernel"], moment, granularity == "leaf")
    np.testing.assert_allclose(eager[name]["kernel"], want, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(jitted[name]["kernel"], want, rtol=2e-4, atol=1e-6)
    assert np.all(np.diff(np.asarray(eager[name]["kernel"]), axis=-1) <= 1e-7)  # more bits, less error
  assert eager["a"]["bias"].shape == (0, len(CHOICES))


def test_output_error_table_full_gram_is_the_output_error_of_ptq():
  plan = groups.plan(PARAMS, [(r"kernel$", groups.neurons(-1))])
  moments = {"a": {"kernel": jnp.asarray(GRAM), "bias": None}, "b": {"kernel": jnp.asarray(GRAM)}}
  table = quantization.output_error_table(PARAMS, moments, (4,), plan, SCHEME)
  w = PARAMS["a"]["kernel"]
  want = quantization.output_error(w, quantization.fake_quant_array(w, 4, SCHEME), jnp.asarray(GRAM))
  np.testing.assert_allclose(table["a"]["kernel"][:, 0], want, rtol=1e-5)


def test_output_error_table_rejects_bad_moments():
  plan = groups.plan(PARAMS, [(r"kernel$", groups.leaf())])
  with pytest.raises(ValueError, match="a/kernel"):
    quantization.output_error_table(
        PARAMS, {"a": {"kernel": jnp.ones((5, 5)), "bias": None}, "b": {"kernel": jnp.ones(6)}},
        CHOICES, plan, SCHEME)
  with pytest.raises(ValueError, match="b/kernel"):
    quantization.output_error_table(
        PARAMS, {"a": {"kernel": jnp.ones(6), "bias": None}, "b": {"kernel": None}},
        CHOICES, plan, SCHEME)

"""LayerDrop and the layer stack: probabilities against the rank formula, skipping equal to a
numpy loop and to depth slicing, keep rates, gradients of skipped layers, no recompilation when
the kept set changes, gather/scatter/scores against numpy, and clear errors."""

import functools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import impjax as ij
from impjax import slicing
from impjax.transforms.layer_drop import (every_other, layer_drop_keep, layer_drop_probs,
                                          most_important)
from impjax.transforms import layer_stack
from tests.helpers import build

DEPTH = 5


@pytest.fixture(scope="module")
def model():
  return nnx.merge(*build(ij.models.ResidualMLP, 12, 8, 16, DEPTH, 3))


def numpy_block(p, h):
  """The residual block in float64 numpy: ``h + down(relu(up(layernorm(h))))``."""
  mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  z = (h - mean) / np.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
  u = np.maximum(z @ p["up"]["kernel"] + p["up"]["bias"], 0.0)
  return h + u @ p["down"]["kernel"] + p["down"]["bias"]


def test_layer_drop_probs_follow_the_rank_formula():
  importance = jnp.array([0.5, 3.0, 1.0, 2.0, 0.1])
  probs = layer_drop_probs(importance, rate=0.3, strength=0.5)
  ranks = np.array([3, 0, 2, 1, 4])
  np.testing.assert_allclose(probs, 0.3 * (1 + 0.5 * (2 * ranks / 4 - 1)), rtol=1e-6)
  np.testing.assert_allclose(float(np.mean(probs)), 0.3, rtol=1e-6)
  jitted = jax.jit(functools.partial(layer_drop_probs, rate=0.3, strength=0.5))
  np.testing.assert_array_equal(jitted(importance), probs)
  np.testing.assert_allclose(layer_drop_probs(importance, 0.2), np.full(5, 0.2),
                             rtol=1e-6)
  np.testing.assert_allclose(layer_drop_probs(jnp.ones(1), 0.2, 1.0), [0.2])


def test_keep_rates_and_reproducibility():
  probs = jnp.array([0.0, 0.2, 0.5, 0.9])
  keys = jax.random.split(jax.random.key(0), 4000)
  keep = np.asarray(jax.jit(jax.vmap(lambda k: layer_drop_keep(k, probs)))(keys))
  np.testing.assert_allclose(keep.mean(0), 1 - np.asarray(probs), atol=0.025)
  np.testing.assert_array_equal(layer_drop_keep(keys[5], probs), keep[5])


@pytest.mark.slow  # over ~10 s
def test_run_layers_skips_like_numpy_and_like_depth_slicing(model):
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  block = ij.models.block_fn(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12)), jnp.float32)
  h0 = np.asarray(model.embed(x), np.float64)
  layers = jax.tree.map(lambda a: np.asarray(a, np.float64), params["blocks"])
  run = jax.jit(lambda h, keep: ij.transforms.run_layers(block, params["blocks"], h, keep))
  for keep in ([True, False, True, False, True], [False] * DEPTH):
    expected = h0
    for l in range(DEPTH):
      if keep[l]:
        expected = numpy_block(jax.tree.map(lambda a, l=l: a[l], layers), expected)
    keep = jnp.asarray(keep)
    eager = ij.transforms.run_layers(block, params["blocks"], jnp.asarray(h0, jnp.float32), keep)
    np.testing.assert_allclose(eager, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run(jnp.asarray(h0, jnp.float32), keep), eager, rtol=1e-6,
                               atol=1e-6)
    if np.any(keep):
      small, config = slicing.slice_depth(model, np.flatnonzero(keep))
      full = model(x, run=functools.partial(ij.transforms.run_layers, block, params["blocks"],
                                            keep=keep))
      np.testing.assert_allclose(small(x), full, rtol=1e-5, atol=1e-5)
      assert config["depth"] == int(np.sum(keep))
  np.testing.assert_allclose(model(x), model(x, run=functools.partial(
      ij.transforms.run_layers, block, params["blocks"])), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_layer_drop_loss_skips_sampled_layers_and_never_retraces(model):
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  block = ij.models.block_fn(model)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 12)), jnp.float32)
  loss = lambda p, x, run: jnp.sum(nnx.merge(graphdef, p)(x, run=run) ** 2)
  wrapped = ij.transforms.layer_drop(loss, block)
  probs = jnp.full((DEPTH,), 0.5)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def value_and_grad(p, key, probs):
    return jax.value_and_grad(wrapped)(p, key, probs, x)

  seen = set()
  for i in range(6):
    key = jax.random.key(i)
    keep = np.asarray(layer_drop_keep(key, probs))
    seen.add(tuple(keep))
    value, grads = value_and_grad(params, key, probs)
    run = functools.partial(ij.transforms.run_layers, block, params["blocks"], keep=keep)
    np.testing.assert_allclose(value, loss(params, x, run), rtol=1e-5)
    up = np.abs(np.asarray(grads["blocks"]["up"]["kernel"])).reshape(DEPTH, -1).sum(1)
    assert np.all((up == 0) == ~keep), (up, keep)  # skipped layers get no gradient
  assert len(seen) > 2  # the kept set changed without a retrace


def test_stack_helpers_match_numpy():
  rng = np.random.default_rng(2)
  layers = {"a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "b": {"c": jnp.asarray(rng.normal(size=(4, 2, 2)), jnp.float32)}}
  idx = jnp.array([3, 1])
  active = layer_stack.gather(layers, idx)
  np.testing.assert_array_equal(active["b"]["c"], np.asarray(layers["b"]["c"])[[3, 1]])
  new = jax.tree.map(lambda a: a + 10.0, active)
  back = jax.jit(layer_stack.scatter)(layers, new, idx)
  expected = np.asarray(layers["a"]).copy()
  expected[[3, 1]] += 10.0
  np.testing.assert_array_equal(back["a"], expected)
  chex.assert_trees_all_equal(back, layer_stack.scatter(layers, new, idx))
  scores = layer_stack.layer_scores(ij.scores.magnitude(layers))
  reference = (np.abs(np.asarray(layers["a"])).sum(1)
               + np.abs(np.asarray(layers["b"]["c"])).sum((1, 2)))
  np.testing.assert_allclose(scores, reference, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(layer_stack.layer_scores)(ij.scores.magnitude(layers)),
                             scores, rtol=1e-6)
  assert every_other(6).tolist() == [0, 2, 4]
  assert most_important(jnp.array([0.2, 0.9, 0.1, 0.5]), 3).tolist() == [0, 1, 3]
  params = {"enc": {"blocks": layers, "w": 1}}
  assert ij.tree_utils.set_path(params, "enc/blocks", None) == {"enc": {"blocks": None, "w": 1}}
  assert ij.tree_utils.get_path(params, "enc/blocks") is layers


def test_bad_input_is_named(model):
  with pytest.raises(ValueError, match="'b'"):
    layer_stack.num_layers({"a": jnp.ones((3, 2)), "b": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="rate"):
    layer_drop_probs(jnp.ones(3), rate=0.6, strength=1.0)
  with pytest.raises(ValueError, match="strength"):
    layer_drop_probs(jnp.ones(3), rate=0.2, strength=2.0)
  with pytest.raises(ValueError, match="probabilities"):
    layer_drop_keep(jax.random.key(0), jnp.array([0.5, 1.5]))
  with pytest.raises(ValueError, match="keep"):
    ij.transforms.run_layers(lambda p, h: h, {"w": jnp.ones(3)}, jnp.ones(2), jnp.ones(2) > 0)
  with pytest.raises(ValueError, match="enc/blocks"):
    ij.tree_utils.get_path({"enc": {}}, "enc/blocks")
  with pytest.raises(ValueError, match="Cannot keep"):
    most_important(jnp.ones(3), 4)
  with pytest.raises(ValueError, match="block indices"):
    slicing.slice_depth(model, [DEPTH])

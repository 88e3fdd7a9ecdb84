"""Ordered and nested dropout: unit scores and ranks against numpy, width masks, samplers'
distributions, the importance order across steps, slicing equal to masking, the PCA-ordering
property of a linear map, eager = jit, and clear errors."""

import functools
import math

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from impjax import slicing
from impjax.transforms.ordered_dropout import FJORD_WIDTHS
from impjax.transforms.ordered_dropout import ORDER_RULES
from tests.helpers import random_tree


def mlp_params(seed=0, widths=(12, 10, 8, 3)):
  hidden = {i: {"kernel": (a, b), "bias": (b,)}
            for i, (a, b) in enumerate(zip(widths[:-2], widths[1:-1]))}
  out = random_tree(seed, {"hidden": hidden, "head": {"kernel": widths[-2:]}})
  out["head"]["bias"] = jnp.zeros(widths[-1], jnp.float32)
  return out


def test_num_kept_is_ceil_eager_and_jit():
  for width in (0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.8, 1.0):
    for n in (5, 8, 10, 256):
      expected = max(1, min(n, math.ceil(round(width * n, 6))))
      assert ij.select.num_kept(width, n) == expected
      assert int(jax.jit(ij.select.num_kept, static_argnums=1)(width, n)) == expected


def test_unit_scores_and_ranks_match_numpy_eager_and_jit():
  params = mlp_params()
  imp = ij.scores.magnitude(params)
  plan = ij.groups.plan(params, ORDER_RULES)
  scores = ij.groups.unit_scores(imp, plan)
  jitted = jax.jit(lambda i: ij.select.unit_ranks(ij.groups.unit_scores(i, plan)))(imp)
  assert sorted(scores) == ["hidden/0", "hidden/1"]  # the head is never ordered
  for i in range(2):
    layer = {k: np.abs(np.asarray(v, np.float64)) for k, v in params["hidden"][i].items()}
    expected = layer["kernel"].sum(0) + layer["bias"]
    np.testing.assert_allclose(scores[f"hidden/{i}"], expected, rtol=1e-5)
    ranks = np.empty(expected.size, int)
    ranks[np.argsort(-expected, kind="stable")] = np.arange(expected.size)
    np.testing.assert_array_equal(ij.select.unit_ranks(scores)[f"hidden/{i}"], ranks)
    np.testing.assert_array_equal(jitted[f"hidden/{i}"], ranks)
  ties = ij.select.unit_ranks({"m": jnp.array([1.0, 2.0, 1.0, 2.0])})["m"]
  assert ties.tolist() == [2, 0, 3, 1]


def test_width_masks_keep_the_best_ranked_prefix_eager_and_jit():
  params = mlp_params(1)
  rng = np.random.default_rng(2)
  ranks = {"hidden/0": jnp.asarray(rng.permutation(10), jnp.int32),
           "hidden/1": jnp.asarray(rng.permutation(8), jnp.int32)}
  jitted = jax.jit(lambda w: ij.transforms.width_masks(params, ranks, w))
  for width in (0.2, 0.5, 0.75, 1.0):
    masks = ij.transforms.width_masks(params, ranks, width)
    chex.assert_trees_all_equal(masks, jitted(jnp.float32(width)))
    for i, n in ((0, 10), (1, 8)):
      keep = np.asarray(ranks[f"hidden/{i}"]) < math.ceil(round(width * n, 6))
      np.testing.assert_array_equal(masks["hidden"][i]["bias"], keep)
      np.testing.assert_array_equal(masks["hidden"][i]["kernel"],
                                    np.broadcast_to(keep, params["hidden"][i]["kernel"].shape))
    assert bool(masks["head"]["kernel"]) and np.ndim(masks["head"]["kernel"]) == 0


@pytest.mark.parametrize("kind", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_sliced_model_equals_masked_model(kind):
  rng = np.random.default_rng(3)
  if kind == "mlp":
    config = {"in_features": 64, "hidden": (16, 12), "num_classes": 10}
    model, units = ij.models.MLP(**config, rngs=nnx.Rngs(0)), {"hidden/0": 16, "hidden/1": 12}
    sliced = lambda width: {"in_features": 64, "num_classes": 10,
                            "hidden": (math.ceil(16 * width), math.ceil(12 * width))}
  else:
    config = {"in_channels": 1, "channels": (6, 8), "dense": 12, "num_classes": 10,
              "image_size": 8}
    model = ij.models.CNN(**config, rngs=nnx.Rngs(0))
    units = {"convs/0": 6, "convs/1": 8, "dense": 12}
    sliced = lambda width: dict(config, channels=(math.ceil(6 * width), math.ceil(8 * width)),
                                dense=math.ceil(12 * width))
  ranks = {m: jnp.asarray(rng.permutation(n), jnp.int32) for m, n in units.items()}
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  x = jnp.asarray(rng.normal(size=(5, 8, 8, 1)), jnp.float32)
  for width in (0.3, 1.0):
    small, small_config = slicing.slice_width(model, width, x, config=config, ranks=ranks)
    assert small_config == sliced(width)
    masked = nnx.merge(graphdef, ij.transforms.at_width(params, ranks, width))(x)
    np.testing.assert_allclose(small(x), masked, rtol=1e-5, atol=1e-5)
    assert ij.models.num_params(small) < ij.models.num_params(model) or width == 1.0
    rebuilt = nnx.eval_shape(lambda: type(model)(**small_config, rngs=nnx.Rngs(1)))
    chex.assert_trees_all_equal_shapes(nnx.state(rebuilt, nnx.Param), nnx.state(small, nnx.Param))


def test_fjord_and_nested_width_distributions():
  keys = jax.random.split(jax.random.key(0), 4000)
  fjord = np.asarray(jax.jit(jax.vmap(ij.transforms.fjord_width))(keys))
  values, counts = np.unique(fjord, return_counts=True)
  np.testing.assert_allclose(values, FJORD_WIDTHS, rtol=1e-6)
  assert np.all(np.abs(counts / 4000 - 0.2) < 0.03), counts
  rho, k = 0.3, 8
  nested = np.asarray(jax.jit(jax.vmap(lambda key: ij.transforms.nested_width(key, rho, k)))(keys))
  b = np.rint(nested * k).astype(int)
  expected = [(1 - rho) ** (i - 1) * rho for i in range(1, k)] + [(1 - rho) ** (k - 1)]
  observed = np.bincount(b, minlength=k + 1)[1:] / 4000
  np.testing.assert_allclose(observed, expected, atol=0.03)
  assert float(ij.transforms.nested_width(keys[0], rho, k)) == float(nested[0])


def test_ordered_dropout_loss_uses_the_sampled_width():
  params = mlp_params(4)
  ranks = ij.transforms.index_ranks(params)
  loss = lambda p: sum(jnp.sum(p["hidden"][i]["bias"] != 0) for i in range(2))
  wrapped = jax.jit(ij.transforms.ordered_dropout(loss))
  for i in range(5):
    key = jax.random.key(i)
    width = float(ij.transforms.fjord_width(key))
    expected = math.ceil(round(width * 10, 6)) + math.ceil(round(width * 8, 6))
    assert int(wrapped(params, key, ranks)) == expected


def test_sandwich_averages_the_sampled_and_the_fixed_widths():
  params = mlp_params(4)
  ranks = ij.transforms.index_ranks(params)
  loss = lambda p: sum(jnp.sum(p["hidden"][i]["bias"] != 0) for i in range(2)).astype(jnp.float32)
  units = lambda w: math.ceil(round(w * 10, 6)) + math.ceil(round(w * 8, 6))  # 10 and 8 units
  wrapped = ij.transforms.ordered_dropout(loss, sandwich=(0.2, 1.0))
  for i in range(3):
    key = jax.random.key(i)
    expected = (units(float(ij.transforms.fjord_width(key))) + units(0.2) + units(1.0)) / 3
    np.testing.assert_allclose(float(wrapped(params, key, ranks)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(jax.jit(wrapped)(params, key, ranks)), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="sandwich width"):
    ij.transforms.ordered_dropout(loss, sandwich=(1.5,))


def test_importance_order_reranks_on_schedule_like_numpy():
  params = mlp_params(5)
  order = ij.transforms.importance_order("magnitude", every=3)
  state = order.init(params)
  np.testing.assert_array_equal(state.ranks["hidden/0"], np.arange(10))
  update = jax.jit(order.update)
  for step in range(1, 8):
    params = jax.tree.map(lambda p: p * 1.1 + 0.05 * step, params)  # the scores move
    previous = state.ranks
    ranks, state = update(state, params)
    for i in range(2):
      layer = {k: np.abs(np.asarray(v, np.float64)) for k, v in params["hidden"][i].items()}
      expected = np.empty(layer["bias"].size, int)
      expected[np.argsort(-(layer["kernel"].sum(0) + layer["bias"]), kind="stable")] = (
          np.arange(layer["bias"].size))
      if step % 3 == 0:
        np.testing.assert_array_equal(ranks[f"hidden/{i}"], expected)
      else:
        np.testing.assert_array_equal(ranks[f"hidden/{i}"], previous[f"hidden/{i}"])
  fixed = ij.transforms.importance_order("magnitude", every=0)
  ranks, _ = fixed.update(fixed.init(params), params)
  np.testing.assert_array_equal(ranks["hidden/1"], np.arange(8))


@pytest.mark.parametrize("sampler", ["nested", "fjord"])
def test_linear_map_orders_units_like_principal_components(sampler):
  """Rippel et al. 2014: the leading units align with the top singular vectors, in order."""
  rng = np.random.default_rng(0)
  rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  scales = np.array([3.0, 2.0, 1.2, 0.5, 0.3, 0.1])
  x = jnp.asarray((rng.normal(size=(1024, 6)) * scales) @ rotation.T, jnp.float32)
  params = {"enc": {"kernel": jnp.asarray(0.1 * rng.normal(size=(6, 3)), jnp.float32)},
            "dec": {"kernel": jnp.asarray(0.1 * rng.normal(size=(3, 6)), jnp.float32)}}
  rules = ((r"^enc/", ij.groups.neurons(-1)),)
  sample = (functools.partial(ij.transforms.nested_width, rho=0.5, num_units=3)
            if sampler == "nested" else ij.transforms.fjord_width)
  loss = lambda p: jnp.mean(jnp.sum((x - x @ p["enc"]["kernel"] @ p["dec"]["kernel"]) ** 2, -1))
  wrapped = ij.transforms.ordered_dropout(loss, sample, rules)
  ranks = ij.transforms.index_ranks(params, rules)
  tx = optax.adam(0.02)

  def step(carry, key):
    p, s = carry
    g = jax.grad(wrapped)(p, key, ranks)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.jit(lambda p, keys: jax.lax.scan(step, (p, tx.init(p)), keys))(
      params, jax.random.split(jax.random.key(1), 3000))
  decoder = np.asarray(params["dec"]["kernel"], np.float64)
  for unit in range(3):
    cosine = abs(decoder[unit] @ rotation[:, unit]) / np.linalg.norm(decoder[unit])
    assert cosine > 0.97, (unit, cosine)


def test_bad_input_is_named():
  params = mlp_params()
  ranks = ij.transforms.index_ranks(params)
  with pytest.raises(ValueError, match="hidden/1"):
    ij.transforms.width_masks(params, {"hidden/0": ranks["hidden/0"]}, 0.5)
  with pytest.raises(ValueError, match="hidden/0"):
    ij.transforms.width_masks(params, {**ranks, "hidden/0": jnp.arange(3)}, 0.5)
  with pytest.raises(ValueError, match="width"):
    ij.transforms.width_masks(params, ranks, 1.5)
  with pytest.raises(ValueError, match="hidden/0/kernel"):
    ij.transforms.index_ranks(params, ((r"hidden/0/kernel", ij.groups.element()),))
  odd = jax.tree.map(lambda x: x, params)
  odd["hidden"][0]["bias"] = jnp.ones(3)
  with pytest.raises(ValueError, match="hidden/0"):
    ij.transforms.index_ranks(odd)
  with pytest.raises(ValueError, match="width"):
    slicing.slice_width(nnx.eval_shape(lambda: ij.models.MLP(4, (4,), 2, rngs=nnx.Rngs(0))), 0.0,
                        jnp.ones((1, 4)), config={"in_features": 4, "hidden": (4,), "num_classes": 2})
  model = ij.models.MLP(4, (4,), 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="names no group"):
    slicing.slice_width(model, 0.5, jnp.ones((1, 4)), ranks={"head": jnp.arange(2)},
                        config={"in_features": 4, "hidden": (4,), "num_classes": 2})
  with pytest.raises(ValueError, match="rho"):
    ij.transforms.nested_width(jax.random.key(0), 0.0, 4)


class _ConvBatchNormNet(nnx.Module):
  """A user's NNX model: conv, BatchNorm (trained statistics), dropout state, a dense pair."""

  def __init__(self, channels: int, hidden: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, channels, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(channels, use_running_average=True, rngs=rngs)
    self.drop = nnx.Dropout(0.1, deterministic=True, rngs=rngs)
    self.fc = nnx.Linear(channels, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 5, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn(self.conv(x)))
    return self.out(jax.nn.relu(self.fc(self.drop(x.mean((1, 2))))))


def test_slice_width_takes_a_users_batchnorm_model_with_its_statistics():
  config = {"channels": 8, "hidden": 12}
  model = _ConvBatchNormNet(**config, rngs=nnx.Rngs(0))
  model.bn.mean[...] = 0.3 * jax.random.normal(jax.random.key(1), (8,))
  model.bn.var[...] = jax.random.uniform(jax.random.key(2), (8,), minval=0.5, maxval=1.5)
  x = jax.random.normal(jax.random.key(3), (2, 6, 6, 3))
  ranks = {"conv": jnp.array([7, 0, 6, 1, 5, 2, 4, 3]), "fc": jnp.arange(12)[::-1]}
  small, small_config = slicing.slice_width(model, 0.5, x, config=config, ranks=ranks)
  assert small_config == {"channels": 4, "hidden": 6}
  kept = np.array([1, 3, 5, 7])  # the channels of rank < 4, in index order
  np.testing.assert_array_equal(small.bn.mean[...], model.bn.mean[...][kept])
  np.testing.assert_array_equal(small.bn.var[...], model.bn.var[...][kept])
  np.testing.assert_array_equal(small.fc.kernel[...], model.fc.kernel[...][kept][:, 6:])
  # The model at that width, by hand: dropped channels and units contribute nothing.
  h = jax.nn.relu(model.bn(model.conv(x))).mean((1, 2))[:, kept]
  h = jax.nn.relu(h @ model.fc.kernel[...][kept][:, 6:] + model.fc.bias[...][6:])
  expected = h @ model.out.kernel[...][6:] + model.out.bias[...]
  np.testing.assert_allclose(small(x), expected, rtol=1e-5, atol=1e-5)

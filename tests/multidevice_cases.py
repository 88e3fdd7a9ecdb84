"""Sharded, pmap and shard_map results equal single-device results.

Run on 8 forced CPU devices by tests/test_multidevice.py (a separate process, since the device
count is fixed when JAX starts). Collective steps block on every result: dispatching many
all-reducing steps ahead on fake CPU devices can deadlock (ENVIRONMENT.md).
"""

import functools

import chex
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import impjax as ij
from tests.helpers import random_tree

N_DEV = 8
SHAPES = {"a": {"kernel": (64, 24)}, "b": {"kernel": (16, 40)}, "c": {"kernel": (128, 8)},
          "c_bias": {"bias": (8,)}}


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() != N_DEV:
    pytest.skip(f"needs {N_DEV} devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  return jax.sharding.Mesh(np.array(jax.devices()), ("d",))


def _ties(rng, shape):
  return rng.integers(-4, 5, size=shape)


def tree(seed, ties=False):
  return random_tree(seed, SHAPES, sample=_ties if ties else None)


def shard_rows(x, mesh):
  spec = P("d") if x.ndim and x.shape[0] % N_DEV == 0 else P()
  return jax.device_put(x, NamedSharding(mesh, spec))


def test_scores_on_sharded_params_equal_single_device(mesh):
  params, grads = tree(0), tree(1)
  sharded_p = jax.tree.map(lambda x: shard_rows(x, mesh), params)
  sharded_g = jax.tree.map(lambda x: shard_rows(x, mesh), grads)
  assert sharded_p["a"]["kernel"].sharding.spec == P("d")
  for name in ij.scores.CRITERIA:
    crit = ij.scores.criterion(name)
    def importance(p, g):
      return crit.importance(p, None if crit.statistic is None else crit.statistic(p, g))
    chex.assert_trees_all_close(jax.jit(importance)(sharded_p, sharded_g),
                                importance(params, grads), rtol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_topk_on_sharded_scores_is_identical(mesh, ties, sparsity):
  scores = tree(2, ties=ties)
  expected = ij.select.topk(scores, sparsity)
  sharded = jax.tree.map(lambda x: shard_rows(x, mesh), scores)
  got = jax.jit(lambda s: ij.select.topk(s, sparsity))(sharded)
  chex.assert_trees_all_equal(got, expected)


@pytest.mark.parametrize("ties", [False, True])
def test_sharded_topk_keeps_scores_on_their_devices(mesh, ties):
  scores = tree(6, ties=ties)
  expected = ij.select.topk(scores, 0.7)
  sharded = jax.tree.map(lambda x: shard_rows(x, mesh), scores)
  got = ij.select.sharded_topk(sharded, 0.7, mesh, "d")
  chex.assert_trees_all_equal(got, expected)
  assert got["a"]["kernel"].sharding.spec == P("d")
  with pytest.raises(ValueError, match="odd/bias"):
    ij.select.sharded_topk({"odd": {"bias": jnp.ones(12)}}, 0.7, mesh, "d")


@pytest.mark.parametrize("ties", [False, True])
def test_prune_lowest_under_shard_map_counts_with_psum(mesh, ties):
  leaves = [x for x in jax.tree.leaves(tree(3, ties=ties)) if x.shape[0] % N_DEV == 0]
  rng = np.random.default_rng(4)
  big = rng.integers(-50, 50, 8 * 300_000) if ties else rng.standard_normal(8 * 300_000)
  leaves.append(jnp.asarray(big, jnp.float32))  # > one 2^18 chunk per device: the loop path
  total = sum(x.size for x in leaves)
  k = int(0.6 * total)
  expected = ij.select.prune_lowest(leaves, k)
  specs = [P("d")] * len(leaves)
  fn = jax.shard_map(lambda ls: ij.select.prune_lowest(ls, k, axis_name="d"), mesh=mesh,
                     in_specs=(specs,), out_specs=specs)
  got = jax.jit(fn)([shard_rows(x, mesh) for x in leaves])
  chex.assert_trees_all_equal(got, expected)
  assert sum(int((~m).sum()) for m in got) == k


def test_estimator_pmean_under_pmap_and_shard_map(mesh):
  params = tree(4)
  per_device = [tree(10 + i) for i in range(N_DEV)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_device)
  est = ij.estimators.running_mean(lambda p, g: ij.scores.fisher(g))
  state = est.init(params)
  mean_fisher = jax.tree.map(lambda *xs: np.mean(np.square(np.stack(xs)), axis=0), *per_device)

  pmapped = jax.pmap(lambda g: est.update(state, params, g, axis_name="d")[0], axis_name="d")
  out = pmapped(stacked)
  for i in range(N_DEV):
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], out), mean_fisher, rtol=1e-6)

  mapped = jax.shard_map(lambda g: est.update(state, params, jax.tree.map(lambda x: x[0], g),
                                              axis_name="d")[0],
                         mesh=mesh, in_specs=P("d"), out_specs=P(), check_vma=False)
  chex.assert_trees_all_close(jax.jit(mapped)(stacked), mean_fisher, rtol=1e-6)


def _loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["a"]["kernel"])
  logits = h @ params["a2"]["kernel"] + params["a2"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def _setup():
  rng = np.random.default_rng(5)
  params = {"a": {"kernel": jnp.asarray(rng.standard_normal((16, 32)) * 0.3, jnp.float32)},
            "a2": {"kernel": jnp.asarray(rng.standard_normal((32, 4)) * 0.3, jnp.float32),
                   "bias": jnp.zeros(4, jnp.float32)}}
  batches = [{"x": jnp.asarray(rng.standard_normal((64, 16)), jnp.float32),
              "y": jnp.asarray(rng.integers(0, 4, 64), jnp.int32)} for _ in range(6)]
  return params, batches


def _tx(axis_name=None):
  return ij.transforms.prune(optax.adam(1e-2), ij.schedules.polynomial(0.0, 0.7, 1, 5, 2),
                              "obd", axis_name=axis_name)


def _jit_step(tx):
  @jax.jit
  def step(params, state, batch):
    updates, state = tx.update(jax.grad(_loss)(params, batch), state, params)
    return optax.apply_updates(params, updates), state
  return step


def _single_device_run(params, batches):
  tx = _tx()
  state, step = tx.init(params), _jit_step(tx)
  for batch in batches:
    params, state = step(params, state, batch)
  return params, state


def test_pmap_data_parallel_masked_training_equals_single_device(mesh):
  params, batches = _setup()
  expected_params, expected_state = _single_device_run(params, batches)
  tx = _tx(axis_name="d")

  @functools.partial(jax.pmap, axis_name="d")
  def step(params, state, batch):
    grads = jax.lax.pmean(jax.grad(_loss)(params, batch), "d")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * N_DEV), t)
  p, s = replicate(params), replicate(tx.init(params))
  for batch in batches:
    split = jax.tree.map(lambda x: x.reshape((N_DEV, -1) + x.shape[1:]), batch)
    p, s = jax.block_until_ready(step(p, s, split))
  first = lambda t: jax.tree.map(lambda x: x[0], t)
  chex.assert_trees_all_equal(first(s).masks, expected_state.masks)
  chex.assert_trees_all_close(first(p), expected_params, rtol=1e-4, atol=1e-5)


def test_jit_named_sharding_masked_training_equals_single_device(mesh):
  params, batches = _setup()
  expected_params, expected_state = _single_device_run(params, batches)
  tx = _tx()
  params = jax.tree.map(lambda x: shard_rows(x, mesh), params)
  state, step = tx.init(params), _jit_step(tx)
  for batch in batches:
    batch = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P("d"))), batch)
    params, state = jax.block_until_ready(step(params, state, batch))
  assert params["a"]["kernel"].sharding.spec == P("d")
  chex.assert_trees_all_equal(state.masks, expected_state.masks)
  chex.assert_trees_all_close(params, expected_params, rtol=1e-4, atol=1e-5)


def test_kernel_input_statistics_split_over_devices_equal_one_device(mesh):
  member = ij.models.zoo.build("lm")
  (ids,) = member.inputs
  ids = jnp.tile(ids, (N_DEV // ids.shape[0] + 1, 1))[:N_DEV]
  token_mask = (jnp.arange(ids.shape[1]) < ids.shape[1] - 1)[None, :] * jnp.ones((N_DEV, 1))
  moments = lambda p, x, m: ij.structure.input_moments(member.apply, p, x, gram=True,
                                                       token_mask=m)
  whole = moments(member.params, ids, token_mask)
  summed = lambda p, x, m: jax.lax.psum(moments(p, x, m), "d")
  by_shard_map = jax.jit(jax.shard_map(summed, mesh=mesh, in_specs=(P(), P("d"), P("d")),
                                       out_specs=P(), check_vma=False))(
      member.params, ids, token_mask)
  by_pmap = jax.pmap(summed, axis_name="d", in_axes=(None, 0, 0))(
      member.params, ids[:, None], token_mask[:, None])
  by_pmap = jax.tree.map(lambda x: x[0], by_pmap)
  assert whole.gram
  for split in (by_shard_map, by_pmap):
    assert sorted(split.gram) == sorted(whole.gram)
    chex.assert_trees_all_close(split.sq, whole.sq, rtol=1e-5)
    # Sums of up to ~100 in float32, added in another order: ~1e-5 apart.
    chex.assert_trees_all_close(split.gram, whole.gram, rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_equal(split.count, whole.count)

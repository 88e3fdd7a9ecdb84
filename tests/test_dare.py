"""DARE and importance-scored delta pruning: a numpy reference on the same draws, the expected
delta kept by the rescale, exact counts, eager and jit alike, and clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import impjax as ij
from tests.helpers import eager_and_jit, random_tree, to_numpy

SHAPES = {"dense1": {"bias": (16,), "kernel": (32, 16)},
          "dense2": {"bias": (4,), "kernel": (16, 4)}}
EVERY_LEAF = [(".*", ij.groups.element())]


def models(seed=0):
  """A pretrained tree and a fine-tuned one a small delta away."""
  pre = random_tree(seed, SHAPES)
  delta = random_tree(seed + 1, SHAPES)
  return jax.tree.map(lambda p, d: p + 0.1 * d, pre, delta), pre


def flat(tree):
  return ij.tree_utils.leaves_by_path(tree)


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("rate", [0.3, 0.9])
def test_dare_matches_numpy_on_the_same_draws(rate, rescale):
  ft, pre = models()
  key = jax.random.key(7)
  out = flat(ij.pruning.dare(ft, pre, rate, key, rescale=rescale))
  draws = flat(to_numpy(ij.scores.random(key, ft)))
  ft_np, pre_np = flat(to_numpy(ft)), flat(to_numpy(pre))
  for path in ft_np:
    if path.endswith("bias"):  # dense under the default rules: the whole delta stays
      np.testing.assert_array_equal(out[path], ft_np[path].astype(np.float32))
      continue
    d = ft_np[path] - pre_np[path]
    kept = draws[path] >= rate
    scale = 1.0 / (1.0 - rate) if rescale else 1.0
    want = np.where(kept, pre_np[path] + scale * d, pre_np[path])
    np.testing.assert_allclose(out[path], want, rtol=1e-6, atol=1e-6)
    assert abs((~kept).mean() - rate) < 0.1


def test_dare_drops_every_leaf_when_the_rules_say_so():
  ft, pre = models()
  out = flat(ij.pruning.dare(ft, pre, 0.5, jax.random.key(0), rules=EVERY_LEAF))
  bias = out["dense1/bias"]
  assert 0 < int((bias == flat(pre)["dense1/bias"]).sum()) < bias.size


def test_dare_preserves_the_expected_delta():
  ft, pre = models()
  rate, n = 0.9, 2000
  keys = jax.random.split(jax.random.key(3), n)
  run = jax.jit(jax.vmap(lambda k: ij.pruning.dare(ft, pre, rate, k, rules=EVERY_LEAF)))
  mean = jax.tree.map(lambda x: x.mean(axis=0), run(keys))
  no_rescale = jax.jit(jax.vmap(
      lambda k: ij.pruning.dare(ft, pre, rate, k, rescale=False, rules=EVERY_LEAF)))(keys)
  for path, d in flat(ij.pruning.deltas(ft, pre)).items():
    got = flat(mean)[path] - flat(pre)[path]
    # Standard error of the mean of d * Bernoulli(0.1) / 0.1 is |d| * 3 / sqrt(n); 5 sigma.
    np.testing.assert_array_less(np.abs(got - d), 5 * 3 * np.abs(d) / np.sqrt(n) + 1e-5)
    shrunk = flat(jax.tree.map(lambda x: x.mean(axis=0), no_rescale))[path] - flat(pre)[path]
    np.testing.assert_allclose(shrunk, 0.1 * d, atol=5 * 0.3 * float(np.abs(d).max())
                               / np.sqrt(n) + 1e-5)


def test_dare_eager_equals_jit_and_rate_zero_is_identity():
  ft, pre = models()
  key = jax.random.key(1)
  # The same entries dropped; the rescaled sums may differ in the last bit (XLA fuses them).
  eager_and_jit(lambda f, p, k: ij.pruning.dare(f, p, 0.7, k), ft, pre, key,
                rtol=1e-6, atol=1e-7)
  eager_and_jit(lambda f, p, k: ij.pruning.dare(f, p, 0.7, k, rescale=False), ft, pre, key)
  eager_and_jit(lambda f, p: ij.pruning.prune_deltas(f, p, "magnitude", 0.7), ft, pre)
  chex.assert_trees_all_equal(ij.pruning.dare(ft, pre, 0.0, key, rules=EVERY_LEAF), ft)
  chex.assert_trees_all_equal(jax.jit(
      lambda r: ij.pruning.dare(ft, pre, r, key, rules=EVERY_LEAF))(jnp.float32(0.0)), ft)
  chex.assert_trees_all_equal(
      ij.pruning.prune_deltas(ft, pre, "magnitude", 0.0, rescale=True), ft)


def test_dare_keeps_the_finetuned_dtype():
  ft, pre = models()
  ft16, pre16 = (jax.tree.map(lambda x: x.astype(jnp.bfloat16), t) for t in (ft, pre))
  out = ij.pruning.dare(ft16, pre16, 0.5, jax.random.key(0))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


@pytest.mark.parametrize("rescale", [True, False])
def test_prune_deltas_keeps_exactly_the_largest_deltas(rescale):
  ft, pre = models()
  rate = 0.8
  out = flat(ij.pruning.prune_deltas(ft, pre, "magnitude", rate, rescale=rescale))
  ft_np, pre_np = flat(to_numpy(ft)), flat(to_numpy(pre))
  kernels = [p for p in ft_np if p.endswith("kernel")]
  d = {p: ft_np[p] - pre_np[p] for p in kernels}
  everything = np.concatenate([np.abs(d[p]).reshape(-1) for p in kernels])
  n_pruned = int(np.floor(rate * everything.size + 0.5))
  cut = np.sort(everything)[n_pruned - 1]  # one global budget; no ties among random floats
  scale = 1.0 / (1.0 - rate) if rescale else 1.0
  total_pruned = 0
  for p in kernels:
    kept = np.abs(d[p]) > cut
    total_pruned += int((~kept).sum())
    want = np.where(kept, pre_np[p] + scale * d[p], pre_np[p])
    np.testing.assert_allclose(out[p], want, rtol=1e-6, atol=1e-6)
  assert total_pruned == n_pruned
  np.testing.assert_array_equal(out["dense2/bias"], ft_np["dense2/bias"].astype(np.float32))


def test_prune_deltas_takes_an_importance_tree_and_structured_rules():
  ft, pre = models()
  importance = jax.tree.map(jnp.abs, ij.pruning.deltas(ft, pre))
  by_tree = ij.pruning.prune_deltas(ft, pre, importance, 0.5)
  chex.assert_trees_all_equal(by_tree, ij.pruning.prune_deltas(ft, pre, "magnitude", 0.5))
  out = ij.pruning.prune_deltas(ft, pre, "magnitude", 0.5,
                                rules=[("kernel", ij.groups.n_of_m(2, 4, axis=0))])
  changed = flat(out)["dense1/kernel"] != flat(pre)["dense1/kernel"]
  np.testing.assert_array_equal(changed.reshape(8, 4, 16).sum(axis=1), 2)


def test_bad_inputs_fail_naming_the_problem():
  ft, pre = models()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="below 1"):
    ij.pruning.dare(ft, pre, 1.0, key)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    ij.pruning.dare(ft, pre, -0.1, key)
  with pytest.raises(ValueError, match="below 1"):
    ij.pruning.prune_deltas(ft, pre, "magnitude", 1.0)
  wrong = dict(pre, dense2={"kernel": jnp.zeros((4, 16)), "bias": jnp.zeros(4)})
  with pytest.raises(ValueError, match="dense2/kernel"):
    ij.pruning.dare(ft, wrong, 0.5, key)
  missing = {"dense1": pre["dense1"]}
  with pytest.raises(ValueError, match="dense2"):
    ij.pruning.prune_deltas(ft, missing, "magnitude", 0.5)
  with pytest.raises(ValueError, match="dense1/kernel.*neurons"):
    ij.pruning.dare(ft, pre, 0.5, key, rules=[("kernel", ij.groups.neurons())])
  with pytest.raises(ValueError, match="fisher"):
    ij.pruning.prune_deltas(ft, pre, "fisher", 0.5)
  with pytest.raises(ValueError, match="importance"):
    ij.pruning.prune_deltas(ft, pre, {"dense1": pre["dense1"]}, 0.5)

"""Tests for impjax.scores: every score against a numpy reference, eager and under jit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import estimators
from impjax import scores
from tests.helpers import eager_and_jit, random_tree, to_numpy


def assert_tree_matches(tree, expected, rtol=1e-6, atol=1e-6):
  """``tree`` (jax) equals the nested-dict numpy reference ``expected``."""
  chex.assert_trees_all_equal_structs(tree, expected)
  for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(expected)):
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# Elementwise scores must be bit-identical eager and jitted; scores with reductions may differ by
# float32 rounding, since XLA fuses and reorders sums under ``jit``.
REDUCED = dict(rtol=1e-5, atol=1e-6)


def np_map(fn, *trees):
  return jax.tree.map(fn, *[to_numpy(t) for t in trees])


# --- data-free scores -------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude(params, p):
  got = eager_and_jit(functools.partial(scores.magnitude, p=p), params)
  ref = np_map(lambda w: np.abs(w) ** p, params)
  assert_tree_matches(got, ref)


def test_magnitude_values_by_hand():
  got = scores.magnitude({"w": jnp.array([-3.0, 0.5, 0.0])}, p=2)
  np.testing.assert_array_equal(got["w"], [9.0, 0.25, 0.0])


@pytest.mark.parametrize("p", [0, 3, 1.5])
def test_magnitude_rejects_other_powers(params, p):
  with pytest.raises(ValueError, match="p must be 1 or 2"):
    scores.magnitude(params, p=p)


# Few distinct shapes: every new shape compiles a threefry kernel (slow on CPU).
RANDOM_TREE = {"a": jnp.zeros((64, 32)), "b": jnp.zeros((64, 32)), "c": [jnp.zeros(5)]}


def test_random_seeded_range_and_independence():
  params = RANDOM_TREE
  s0 = scores.random(jax.random.key(0), params)
  s0_again = scores.random(jax.random.key(0), params)
  s1 = scores.random(jax.random.key(1), params)
  chex.assert_trees_all_equal(s0, s0_again)
  for leaf0, leaf1, w in zip(jax.tree.leaves(s0), jax.tree.leaves(s1), jax.tree.leaves(params)):
    assert leaf0.shape == w.shape and leaf0.dtype == jnp.float32
    v = np.asarray(leaf0)
    assert v.min() >= 0.0 and v.max() < 1.0
    assert not np.array_equal(v, np.asarray(leaf1))
  a, b = np.asarray(s0["a"]).ravel(), np.asarray(s0["b"]).ravel()
  # Same shape, different leaf: different draws, uncorrelated, each roughly uniform.
  assert np.mean(a == b) < 0.01
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
  for v in (a, b):
    assert abs(v.mean() - 0.5) < 0.03
    counts = np.histogram(v, bins=10, range=(0, 1))[0]
    assert counts.min() > 0.7 * v.size / 10


def test_random_depends_on_path_not_on_values_or_other_leaves():
  key = jax.random.key(3)
  small = {"a": jnp.zeros(5)}
  big = {"a": jnp.full(5, 7.0), "z": jnp.zeros((64, 32))}
  np.testing.assert_array_equal(scores.random(key, small)["a"], scores.random(key, big)["a"])
  renamed = {"b": jnp.zeros(5)}
  assert not np.array_equal(scores.random(key, small)["a"], scores.random(key, renamed)["b"])


def test_random_eager_equals_jit():
  eager_and_jit(scores.random, jax.random.key(5), RANDOM_TREE)


# --- gradient scores --------------------------------------------------------------------------


def test_saliency(grads):
  got = eager_and_jit(scores.saliency, grads)
  assert_tree_matches(got, np_map(np.abs, grads))


def test_taylor_elementwise(params, grads):
  got = eager_and_jit(scores.taylor, params, grads)
  assert_tree_matches(got, np_map(lambda w, g: np.abs(w * g), params, grads))


def test_taylor_by_hand():
  got = scores.taylor({"w": jnp.array([[2.0, -1.0]])}, {"w": jnp.array([[-0.5, 3.0]])})
  np.testing.assert_array_equal(got["w"], [[1.0, 3.0]])


def _taylor_group_ref(w, g, axis):
  """One score per index of ``axis``: |sum over everything else of w * g| (explicit loop)."""
  w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
  if w.ndim == 0:
    return np.abs(w * g)
  axis = axis % w.ndim
  out = np.zeros(w.shape[axis])
  for u in range(w.shape[axis]):
    total = 0.0
    for idx in np.ndindex(*w.shape):
      if idx[axis] == u:
        total += w[idx] * g[idx]
    out[u] = abs(total)
  return out


@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_taylor_group(axis):
  shapes = {"conv": {"kernel": (3, 3, 2, 4)}, "qkv": {"kernel": (6, 2, 3)}}
  if axis in (-1, 0):  # every leaf has these axes (keys sorted: the order of the draws)
    shapes = {"bias": (4,), "conv": shapes["conv"], "dense": {"kernel": (5, 6)},
              "qkv": shapes["qkv"], "scalar": ()}
  p, g = random_tree(10, shapes), random_tree(11, shapes)
  got = eager_and_jit(functools.partial(scores.taylor_group, axis=axis), p, g, **REDUCED)
  ref = jax.tree.map(lambda w, gg: _taylor_group_ref(w, gg, axis), to_numpy(p), to_numpy(g))
  assert_tree_matches(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [1, -2])
def test_taylor_group_names_a_leaf_without_the_axis(axis):
  tree = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  with pytest.raises(ValueError, match=f"'dense/bias' of shape \\(3,\\) has no axis {axis}"):
    scores.taylor_group(tree, tree, axis=axis)


def test_taylor_group_is_not_elementwise_sum_of_abs():
  # The group form sums w*g before the absolute value (Molchanov et al. 2019): signs cancel.
  w = {"k": jnp.array([[1.0, 2.0], [3.0, -4.0]])}
  g = {"k": jnp.ones((2, 2))}
  np.testing.assert_array_equal(scores.taylor_group(w, g)["k"], [4.0, 2.0])
  np.testing.assert_array_equal(scores.taylor_group(w, g, axis=0)["k"], [3.0, 1.0])


def test_fisher(grads):
  got = eager_and_jit(scores.fisher, grads)
  assert_tree_matches(got, np_map(np.square, grads))


def test_obd(params, grads):
  fisher = np_map(np.square, grads)
  got = eager_and_jit(scores.obd, params, jax.tree.map(jnp.asarray, fisher))
  assert_tree_matches(got, np_map(lambda w, g: 0.5 * w**2 * g**2, params, grads), rtol=1e-5)


def test_movement(params, grads):
  got = eager_and_jit(scores.movement, params, grads)
  assert_tree_matches(got, np_map(lambda w, g: -w * g, params, grads))
  np.testing.assert_array_equal(
      scores.movement({"w": jnp.array([2.0, 2.0])}, {"w": jnp.array([-1.0, 1.0])})["w"],
      [2.0, -2.0])


@pytest.mark.parametrize("fn", [scores.taylor, scores.taylor_group, scores.movement,
                                scores.obd])
def test_pair_scores_name_mismatched_leaf(params, grads, fn):
  missing = {k: dict(v) for k, v in grads.items()}
  del missing["dense2"]["bias"]
  with pytest.raises(ValueError, match="dense2/bias"):
    fn(params, missing)
  reshaped = {k: dict(v) for k, v in grads.items()}
  reshaped["dense1"]["kernel"] = reshaped["dense1"]["kernel"].T
  with pytest.raises(ValueError, match=r"'dense1/kernel' has shape \(16, 32\)"):
    fn(params, reshaped)


# --- per-sample gradients ---------------------------------------------------------------------


def _mlp_loss(params, batch):
  """Softmax cross-entropy of a 2-layer MLP; ``batch`` has a leading batch axis."""
  h = jnp.tanh(batch["x"] @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  logits = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


@pytest.fixture(scope="module")
def mlp_setup():
  params = random_tree(0)
  mlp = {"dense1": params["dense1"], "dense2": params["dense2"]}
  rng = np.random.default_rng(7)
  batch = {"x": jnp.asarray(rng.standard_normal((6, 32)), jnp.float32),
           "y": jnp.asarray(rng.integers(0, 10, 6), jnp.int32)}
  loop = []  # explicit loop: one jax.grad call per example (jitted: one compile, not six)
  grad_fn = jax.jit(jax.grad(_mlp_loss))
  for i in range(6):
    example = {"x": batch["x"][i:i + 1], "y": batch["y"][i:i + 1]}
    loop.append(to_numpy(grad_fn(mlp, example)))
  return mlp, batch, loop


def test_per_sample_grads_equal_loop(mlp_setup):
  mlp, batch, loop = mlp_setup
  got = eager_and_jit(functools.partial(scores.per_sample_grads, _mlp_loss), mlp, batch,
                      rtol=1e-5, atol=1e-5)
  ref = jax.tree.map(lambda *gs: np.stack(gs), *loop)
  # float32 matmuls batched (vmap) and one at a time round differently: ~1e-6 absolute.
  assert_tree_matches(got, ref, rtol=1e-4, atol=1e-5)
  # The examples differ, so the per-sample gradients must too (not a broadcast batch gradient).
  assert not np.allclose(got["dense2"]["kernel"][0], got["dense2"]["kernel"][1])


def test_fisher_per_sample_equals_loop(mlp_setup):
  mlp, batch, loop = mlp_setup
  got = eager_and_jit(functools.partial(scores.fisher_per_sample, _mlp_loss), mlp, batch,
                      **REDUCED)
  ref = jax.tree.map(lambda *gs: np.mean(np.square(np.stack(gs)), axis=0), *loop)
  assert_tree_matches(got, ref, rtol=1e-4, atol=1e-6)
  # Mean of squares, not square of the mean gradient.
  batch_grad = to_numpy(jax.grad(_mlp_loss)(mlp, batch))
  assert not np.allclose(got["dense1"]["kernel"], batch_grad["dense1"]["kernel"] ** 2,
                         rtol=1e-2)


def test_per_sample_grads_pass_a_batch_axis_of_one():
  shapes = []

  def loss(p, ex):
    shapes.append(ex["x"].shape)
    return jnp.sum(p["w"] * ex["x"][0]) ** 2
  x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]])
  g = scores.per_sample_grads(loss, {"w": jnp.array([1.0, 1.0])}, {"x": x})
  assert shapes and all(s == (1, 2) for s in shapes)
  # d/dw (w . x)^2 = 2 (w . x) x
  ref = np.stack([2 * np.dot([1.0, 1.0], xi) * xi for xi in np.asarray(x)])
  np.testing.assert_allclose(g["w"], ref, rtol=1e-6)


# --- named criteria ---------------------------------------------------------------------------

REFERENCES = {
    # name: (importance from numpy params/grads, the state of its estimator)
    "magnitude": (lambda w, g: np.abs(w), None),
    "random": (None, None),
    "saliency": (lambda w, g: np.abs(g), estimators.EmaState),
    "taylor": (lambda w, g: np.abs(w * g), estimators.EmaState),
    "fisher": (lambda w, g: g**2, estimators.EmaState),
    "obd": (lambda w, g: 0.5 * w**2 * g**2, estimators.EmaState),
    "movement": (lambda w, g: -w * g, estimators.SumState),
}


def test_references_cover_all_names():
  assert set(REFERENCES) == set(scores.CRITERIA)


def _importance(c, params, grads):
  stat = None if c.statistic is None else c.statistic(params, grads)
  return c.importance(params, stat)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_criterion_importance(params, grads, name):
  ref_fn, state_type = REFERENCES[name]
  c = scores.criterion(name)
  assert c.name == name
  assert (c.statistic is None) == (state_type is None) == (c.estimator is None)
  if state_type is not None:
    assert type(c.estimator(c.statistic).init(params)) is state_type
  if name == "random":
    got = eager_and_jit(functools.partial(_importance, c), RANDOM_TREE, RANDOM_TREE)
    chex.assert_trees_all_equal(got, scores.random(jax.random.key(0), RANDOM_TREE))
    for leaf in jax.tree.leaves(got):
      assert 0.0 <= float(leaf.min()) and float(leaf.max()) < 1.0
    return
  got = eager_and_jit(functools.partial(_importance, c), params, grads)
  assert_tree_matches(got, np_map(ref_fn, params, grads), rtol=1e-5)


def test_criterion_options(params, grads):
  sq = _importance(scores.criterion("magnitude", p=2), params, grads)
  assert_tree_matches(sq, np_map(np.square, params), rtol=1e-6)
  tree = RANDOM_TREE
  r3 = _importance(scores.criterion("random", seed=3), tree, tree)
  chex.assert_trees_all_equal(r3, _importance(scores.criterion("random", seed=3), tree, tree))
  r4 = _importance(scores.criterion("random", seed=4), tree, tree)
  assert not np.array_equal(r3["a"], r4["a"])
  with pytest.raises(ValueError, match="p must be 1 or 2"):
    scores.criterion("magnitude", p=3)
  with pytest.raises(ValueError, match="Unknown criterion 'snip'"):
    scores.criterion("snip")

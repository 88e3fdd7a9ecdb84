"""Tests for impjax.estimators: EMA, running mean and sum against numpy recurrences."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import estimators, scores
from tests.helpers import random_tree, to_numpy

STEPS = 5


def fisher_stat(params, grads):
  return scores.fisher(grads)


@pytest.fixture(scope="module")
def setup():
  params = random_tree(0)
  grads = [random_tree(100 + t) for t in range(STEPS)]
  stats = [jax.tree.map(np.square, to_numpy(g)) for g in grads]  # numpy g^2 per step
  return params, grads, stats


def run(est, params, grads, jit):
  update = jax.jit(est.update) if jit else est.update
  state = est.init(params)
  outs = []
  for g in grads:
    value, state = update(state, params, g)
    outs.append((value, state))
  return outs


def check_state(state, type_name, count, params_like):
  assert type(state).__name__ == type_name
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  assert int(state.count) == count
  for v, p in zip(jax.tree.leaves(state.value), jax.tree.leaves(params_like)):
    assert v.dtype == jnp.float32 and v.shape == p.shape


@pytest.mark.parametrize("factory,type_name", [
    (functools.partial(estimators.ema, decay=0.9), "EmaState"),
    (estimators.running_mean, "RunningMeanState"),
    (estimators.sum, "SumState"),
])
def test_init(factory, type_name):
  params = random_tree(0, dtype=jnp.bfloat16)  # float32 state even for bf16 params
  state = factory(fisher_stat).init(params)
  check_state(state, type_name, 0, params)
  for v in jax.tree.leaves(state.value):
    np.testing.assert_array_equal(v, 0.0)


def test_init_shape_follows_statistic():
  params = random_tree(0)
  est = estimators.running_mean(lambda p, g: scores.taylor_group(p, g, axis=-1))
  state = est.init(params)
  assert state.value["dense1"]["kernel"].shape == (16,)
  assert state.value["conv"]["kernel"].shape == (8,)


@pytest.mark.parametrize("decay,debias", [(0.9, True), (0.9, False), (0.5, True),
                                          (0.0, True)])
def test_ema_matches_numpy_recurrence(setup, decay, debias):
  params, grads, stats = setup
  est = estimators.ema(fisher_stat, decay=decay, debias=debias)
  eager = run(est, params, grads, jit=False)
  jitted = run(est, params, grads, jit=True)
  v = jax.tree.map(np.zeros_like, stats[0])
  for t, (stat, (value, state)) in enumerate(zip(stats, eager), start=1):
    v = jax.tree.map(lambda a, s: decay * a + (1 - decay) * s, v, stat)
    expected = jax.tree.map(lambda a: a / (1 - decay**t), v) if debias else v
    chex.assert_trees_all_close(value, expected, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(state.value, v, rtol=1e-5, atol=1e-7)
    check_state(state, "EmaState", t, params)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)  # XLA may fuse to FMA


def test_ema_debias_of_constant_statistic_is_exact():
  # With debiasing, the first estimates of a constant statistic are that constant.
  est = estimators.ema(lambda p, g: g, decay=0.99, debias=True)
  state = est.init({"w": jnp.zeros(2)})
  for _ in range(3):
    value, state = est.update(state, None, {"w": jnp.array([2.0, -1.0])})
    np.testing.assert_allclose(value["w"], [2.0, -1.0], rtol=1e-5)
  np.testing.assert_allclose(state.value["w"], np.array([2.0, -1.0]) * (1 - 0.99**3), rtol=1e-5)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_ema_rejects_bad_decay(decay):
  with pytest.raises(ValueError, match="decay"):
    estimators.ema(fisher_stat, decay=decay)


def test_running_mean_equals_mean_over_steps(setup):
  params, grads, stats = setup
  est = estimators.running_mean(fisher_stat)
  eager = run(est, params, grads, jit=False)
  jitted = run(est, params, grads, jit=True)
  for t, (value, state) in enumerate(eager, start=1):
    expected = jax.tree.map(lambda *s: np.mean(np.stack(s), axis=0), *stats[:t])
    chex.assert_trees_all_close(value, expected, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(state.value, expected, rtol=1e-5, atol=1e-7)
    check_state(state, "RunningMeanState", t, params)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)  # XLA may fuse to FMA


def test_sum_equals_sum_over_steps(setup):
  params, grads, _ = setup
  est = estimators.sum(scores.movement)
  eager = run(est, params, grads, jit=False)
  jitted = run(est, params, grads, jit=True)
  p = to_numpy(params)
  for t, (value, state) in enumerate(eager, start=1):
    expected = jax.tree.map(lambda w, *gs: np.sum([-w * g for g in gs], axis=0), p,
                            *[to_numpy(g) for g in grads[:t]])
    chex.assert_trees_all_close(value, expected, rtol=1e-5, atol=1e-6)
    check_state(state, "SumState", t, params)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)  # XLA may fuse to FMA


def test_by_name():
  assert estimators.BY_NAME == {"ema": estimators.ema, "running_mean": estimators.running_mean,
                                "sum": estimators.sum}


EMA_DECAY = 0.8


def _numpy_estimate(kind, stats):
  """The estimate after the per-step statistics ``stats``, computed in numpy."""
  if kind == "sum":
    return jax.tree.map(lambda *s: np.sum(s, axis=0), *stats)
  if kind == "running_mean":
    return jax.tree.map(lambda *s: np.mean(s, axis=0), *stats)
  v = jax.tree.map(np.zeros_like, stats[0])
  for s in stats:
    v = jax.tree.map(lambda a, b: EMA_DECAY * a + (1 - EMA_DECAY) * b, v, s)
  return jax.tree.map(lambda a: a / (1 - EMA_DECAY**len(stats)), v)


@pytest.mark.parametrize("kind", ["ema", "running_mean", "sum"])
def test_axis_name_averages_statistic_across_mapped_axis(kind):
  """Under vmap with axis_name, every index holds the estimate of the mean statistic."""
  factory = functools.partial(estimators.ema, decay=EMA_DECAY) if kind == "ema" else (
      estimators.BY_NAME[kind])
  est = factory(fisher_stat)
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  rng = np.random.default_rng(0)
  devices = 4
  steps = [{"w": rng.standard_normal((devices, 3, 2)).astype(np.float32),
            "b": rng.standard_normal((devices, 2)).astype(np.float32)} for _ in range(3)]
  vupdate = jax.jit(jax.vmap(lambda state, g: est.update(state, params, g, axis_name="d"),
                             axis_name="d"))
  state = jax.tree.map(lambda x: jnp.stack([x] * devices), est.init(params))
  for g in steps:
    value, state = vupdate(state, g)
  # Reference: the statistic of each step averaged over the mapped axis (one big batch).
  mean_stats = [jax.tree.map(lambda x: np.mean(np.square(x.astype(np.float64)), axis=0), g)
                for g in steps]
  expected = _numpy_estimate(kind, mean_stats)
  for leaf, ref in zip(jax.tree.leaves(value), jax.tree.leaves(expected)):
    for d in range(devices):
      np.testing.assert_allclose(leaf[d], ref, rtol=1e-5, atol=1e-7)
  # The per-index statistics really differ, so the pmean is what made them agree.
  assert not np.allclose(steps[0]["w"][0] ** 2, steps[0]["w"][1] ** 2)
  np.testing.assert_array_equal(state.count, [3] * devices)


def test_without_axis_name_each_index_keeps_its_own_statistic():
  est = estimators.running_mean(lambda p, g: g)
  params = {"w": jnp.zeros(2)}
  g = jnp.array([[1.0, 2.0], [3.0, 6.0]])
  value, _ = jax.vmap(lambda gg: est.update(est.init(params), params, {"w": gg}),
                      axis_name="d")(g)
  np.testing.assert_allclose(value["w"], g)
  value, _ = jax.vmap(lambda gg: est.update(est.init(params), params, {"w": gg}, axis_name="d"),
                      axis_name="d")(g)
  np.testing.assert_allclose(value["w"], [[2.0, 4.0], [2.0, 4.0]])


def _quadratic_grads(params, batch):
  """Gradient of 0.5 * ||w - x_b||^2 for each leaf: w - x_b (batch is a tree like params)."""
  return jax.grad(lambda p: 0.5 * sum(jnp.sum((w - x)**2) for w, x in
                                      zip(jax.tree.leaves(p), jax.tree.leaves(batch))))(params)


def test_calibrate_returns_running_mean_over_batches():
  params = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.0, 3.0]])}
  rng = np.random.default_rng(3)
  batches = [jax.tree.map(lambda w: jnp.asarray(rng.standard_normal(w.shape), jnp.float32),
                          params) for _ in range(4)]
  est = estimators.running_mean(fisher_stat)
  got = estimators.calibrate(est, params, batches, _quadratic_grads, total=4, progress=False)
  expected = jax.tree.map(
      lambda w, *xs: np.mean([(np.asarray(w) - np.asarray(x))**2 for x in xs], axis=0),
      params, *batches)
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)
  # A generator works too (no len()), and an EMA gives the debiased EMA.
  ema = estimators.ema(fisher_stat, decay=0.5)
  got = estimators.calibrate(ema, params, iter(batches), _quadratic_grads, progress=False)
  stats = [jax.tree.map(lambda w, x: (np.asarray(w) - np.asarray(x))**2, params, b)
           for b in batches]
  v = jax.tree.map(np.zeros_like, stats[0])
  for s in stats:
    v = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, v, s)
  chex.assert_trees_all_close(got, jax.tree.map(lambda a: a / (1 - 0.5**4), v), rtol=1e-5)


def test_calibrate_without_batches_raises():
  est = estimators.running_mean(fisher_stat)
  with pytest.raises(ValueError, match="no batches"):
    estimators.calibrate(est, {"w": jnp.zeros(1)}, [], _quadratic_grads, progress=False)

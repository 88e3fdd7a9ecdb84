"""Targeted dropout: the targeted set against for-ai/TD's sort formula, drop rates, rng
reproducibility, gradients of the wrapped loss, eager = jit, and clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import impjax as ij
from impjax.transforms.targeted_dropout import targeted, targeted_masks
from tests.helpers import eager_and_jit, random_tree

WEIGHT_RULES = ((r"(^|/)kernel$", ij.groups.element()),)
UNIT_RULES = ((r"(^|/)kernel$", ij.groups.neurons(-1)),)


def make_params(seed=0):
  return random_tree(seed, {"conv": {"kernel": (3, 3, 2, 6), "bias": (6,)},
                            "dense": {"kernel": (20, 8), "bias": (8,)}})


def reference_weight_targets(w, gamma):
  """for-ai/TD: ``tau_j = sort(|W[:, j]|)[floor(gamma * fan_in)]``, targeted ``|W| < tau_j``."""
  cols = np.abs(np.asarray(w, np.float64)).reshape(-1, w.shape[-1])
  k = int(np.floor(np.float32(gamma) * np.float32(cols.shape[0])))
  if k >= cols.shape[0]:
    return np.ones(w.shape, bool)
  tau = np.sort(cols, axis=0)[k]
  return (cols < tau).reshape(w.shape)


def reference_unit_targets(w, gamma):
  """for-ai/TD unit variant: units whose column L2 norm is below the ``floor(gamma*n)``-th."""
  norms = np.linalg.norm(np.asarray(w, np.float64).reshape(-1, w.shape[-1]), axis=0)
  k = int(np.floor(np.float32(gamma) * np.float32(norms.size)))
  if k >= norms.size:
    return np.ones(norms.size, bool)
  return norms < np.sort(norms)[k]


def test_weight_targets_match_sort_formula_eager_and_jit():
  params = make_params()
  imp = ij.scores.magnitude(params)
  plan = ij.groups.plan(params, WEIGHT_RULES)
  fn = lambda i, g: targeted(i, plan, g)
  for gamma in (0.0, 0.3, 0.5, 0.9, 1.0):
    eager = eager_and_jit(fn, imp, gamma)
    for leaf in ("conv", "dense"):
      np.testing.assert_array_equal(eager[leaf]["kernel"],
                                    reference_weight_targets(params[leaf]["kernel"], gamma))
      assert not bool(eager[leaf]["bias"])  # dense leaves are never targeted


def test_unit_targets_match_column_norm_formula():
  params = make_params(1)
  plan = ij.groups.plan(params, UNIT_RULES)
  for gamma in (0.25, 0.5, 0.75):
    out = targeted(ij.scores.magnitude(params), plan, gamma)
    for leaf in ("conv", "dense"):
      w = params[leaf]["kernel"]
      expected = np.broadcast_to(reference_unit_targets(w, gamma), w.shape)
      np.testing.assert_array_equal(np.broadcast_to(out[leaf]["kernel"], w.shape), expected)


@pytest.mark.slow  # over ~10 s
def test_masks_drop_only_targets_at_rate_alpha_and_are_reproducible():
  params = make_params(2)
  imp = ij.scores.magnitude(params)
  plan = ij.groups.plan(params, WEIGHT_RULES)
  gamma, alpha = 0.5, 0.3
  targets = targeted(imp, plan, gamma)
  draw = jax.jit(jax.vmap(lambda k: targeted_masks(k, imp, plan, gamma, alpha)))
  masks = draw(jax.random.split(jax.random.key(0), 200))
  dropped, targeted_total = 0, 0
  for leaf in ("conv", "dense"):
    m, t = np.asarray(masks[leaf]["kernel"]), np.asarray(targets[leaf]["kernel"])
    assert np.all(m[:, ~t]), "an untargeted weight was dropped"
    dropped += int((~m).sum())
    targeted_total += 200 * int(t.sum())
    assert not np.array_equal(m[0], m[1])  # different keys, different masks
  assert np.all(np.asarray(masks["dense"]["bias"]))
  rate = dropped / targeted_total  # ~27,000 Bernoulli draws: std ~0.003
  assert abs(rate - alpha) < 0.015, rate
  key = jax.random.key(7)  # the same key gives the same masks, eager or jitted
  eager = eager_and_jit(lambda k: targeted_masks(k, imp, plan, gamma, alpha), key)
  chex.assert_trees_all_equal(eager, targeted_masks(key, imp, plan, gamma, alpha))


def test_unit_masks_drop_whole_columns():
  params = make_params(3)
  plan = ij.groups.plan(params, UNIT_RULES)
  targets = targeted(ij.scores.magnitude(params), plan, 0.5)
  masks = targeted_masks(jax.random.key(0), ij.scores.magnitude(params), plan,
                                       0.5, 1.0)
  w = params["dense"]["kernel"]
  m = np.broadcast_to(masks["dense"]["kernel"], w.shape)
  assert np.all(m == m[:1])  # one decision per output unit
  np.testing.assert_array_equal(~m[0], reference_unit_targets(w, 0.5))
  np.testing.assert_array_equal(~m, np.broadcast_to(targets["dense"]["kernel"], w.shape))


def test_wrapped_loss_masks_params_without_rescale_and_blocks_gradients():
  params = make_params(4)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 20)), jnp.float32)
  loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"]))
  wrapped = ij.transforms.targeted_dropout(loss, gamma=0.5, alpha=1.0)
  key = jax.random.key(0)
  targets = reference_weight_targets(params["dense"]["kernel"], 0.5)
  w = np.where(targets, 0.0, np.asarray(params["dense"]["kernel"], np.float64))
  expected = np.sum(np.tanh(np.asarray(x, np.float64) @ w + np.asarray(params["dense"]["bias"])))
  np.testing.assert_allclose(float(wrapped(params, key, x)), expected, rtol=1e-5)
  grads = jax.jit(jax.grad(wrapped))(params, key, x)
  assert np.all(np.asarray(grads["dense"]["kernel"])[targets] == 0.0)
  assert np.all(np.asarray(grads["dense"]["kernel"])[~targets] != 0.0)
  # evaluation: the unwrapped loss is deterministic and untouched
  assert float(loss(params, x)) == float(loss(params, x)) != float(wrapped(params, key, x))


def test_wrapped_loss_takes_any_importance_and_never_retraces():
  params = make_params(6)
  loss = lambda p: jnp.sum(p["dense"]["kernel"])
  wrapped = ij.transforms.targeted_dropout(loss, gamma=0.5, alpha=1.0)
  taylor = ij.scores.taylor(params, make_params(7))
  plan = ij.groups.plan(params)
  expected = ij.transforms.apply_masks(
      params, targeted_masks(jax.random.key(3), taylor, plan, 0.5, 1.0))
  got = wrapped(params, jax.random.key(3), importance=taylor)
  np.testing.assert_allclose(got, jnp.sum(expected["dense"]["kernel"]), rtol=1e-6)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, key):
    return jax.grad(wrapped)(p, key)
  for i in range(4):
    step(params, jax.random.key(i))


def test_bad_input_names_the_leaf():
  params = make_params()
  imp = ij.scores.magnitude(params)
  with pytest.raises(ValueError, match="gamma"):
    targeted(imp, ij.groups.plan(params), 1.5)
  with pytest.raises(ValueError, match="alpha"):
    ij.transforms.targeted_dropout(lambda p: 0.0, alpha=-0.1)
  bias_plan = ij.groups.plan(params, ((r"dense/bias$", ij.groups.element()),))
  with pytest.raises(ValueError, match="dense/bias"):
    targeted(imp, bias_plan, 0.5)
  nm_plan = ij.groups.plan(params, ((r"dense/kernel$", ij.groups.n_of_m(2, 4)),))
  with pytest.raises(ValueError, match="dense/kernel"):
    targeted(imp, nm_plan, 0.5)
  bad = jax.tree.map(lambda x: x, imp)
  bad["conv"]["kernel"] = bad["conv"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="conv/kernel"):
    targeted(bad, ij.groups.plan(params), 0.5)

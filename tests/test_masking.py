"""The masking transform: exact counts, zeros kept through optimizers, schedules, estimators,
non-finite guards, and use from NNX and Linen train steps."""

import functools

import chex
from flax import nnx
from flax.training import train_state
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from impjax.transforms import masking
from tests.helpers import random_tree

SHAPES = {"conv": {"kernel": (3, 3, 2, 8), "bias": (8,)},
          "dense": {"kernel": (16, 12), "bias": (12,)},
          "head": {"kernel": (12, 4)}}


def make_params(seed=0):
  return random_tree(seed, SHAPES)


def random_grads(params, seed):
  return random_tree(seed, jax.tree.map(np.shape, params))


KERNELS = ("conv/kernel", "dense/kernel", "head/kernel")


def flat(tree):
  return dict(zip(ij.tree_utils.path_names(tree), jax.tree.leaves(tree)))


def kernel_sizes(params):
  return sum(v.size for k, v in flat(params).items() if k in KERNELS)


def test_apply_masks_matches_numpy():
  params = make_params()
  masks = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(1).random(p.shape) > 0.5),
                       params)
  out = ij.transforms.apply_masks(params, masks)
  for k, v in flat(out).items():
    np.testing.assert_array_equal(v, np.where(flat(masks)[k], flat(params)[k], 0.0))
  chex.assert_trees_all_equal(jax.jit(ij.transforms.apply_masks)(params, masks), out)


@pytest.mark.parametrize("inner", [
    optax.adam(1e-2), optax.sgd(1e-2, momentum=0.9), optax.adamw(1e-2, weight_decay=0.1)],
    ids=["adam", "momentum", "adamw"])
def test_pruned_weights_stay_exactly_zero_and_count_is_exact(inner):
  params = make_params()
  sched = ij.schedules.polynomial(0.0, 0.8, begin_step=2, end_step=12, frequency=2)
  tx = ij.transforms.prune(inner, sched, "magnitude")
  state = tx.init(params)
  update = jax.jit(tx.update)
  n = kernel_sizes(params)
  previous = None
  for step in range(16):
    updates, state = update(random_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
    masks = state.masks
    pruned = sum(int((~flat(masks)[k]).sum()) for k in KERNELS)
    expected = int(np.floor(float(sched.sparsity(step)) * n + 0.5)) if step >= 2 else 0
    if bool(sched.is_update_step(step)) or step < 2:
      assert pruned == expected
    for k in KERNELS:
      w, m = np.asarray(flat(params)[k]), np.asarray(flat(masks)[k])
      assert np.all(w[~m] == 0.0), (step, k)
      assert np.all(w[m] != 0.0)
    assert all(np.ndim(flat(masks)[k]) == 0 for k in ("conv/bias", "dense/bias"))
    if previous is not None:  # no regrowth by default
      for k in KERNELS:
        assert not np.any(np.asarray(flat(masks)[k]) & ~np.asarray(flat(previous)[k]))
    previous = masks
  assert pruned == int(np.floor(0.8 * n + 0.5))


@pytest.mark.slow  # over ~10 s: eager updates
def test_eager_and_jit_updates_agree():
  params = make_params()
  tx = ij.transforms.prune(optax.adam(1e-2), ij.schedules.one_shot(0.6, step=1), "taylor")
  s_eager = s_jit = tx.init(params)
  p_eager = p_jit = params
  for step in range(3):
    grads = random_grads(params, step)
    u, s_eager = tx.update(grads, s_eager, p_eager)
    p_eager = optax.apply_updates(p_eager, u)
    u, s_jit = jax.jit(tx.update)(grads, s_jit, p_jit)
    p_jit = optax.apply_updates(p_jit, u)
  chex.assert_trees_all_equal(s_eager.masks, s_jit.masks)
  chex.assert_trees_all_close(p_eager, p_jit, rtol=1e-6, atol=1e-6)


def test_obd_masks_follow_numpy_ema_fisher_reference():
  params = make_params()
  decay, steps = 0.5, 4
  tx = ij.transforms.prune(optax.sgd(0.0), ij.schedules.one_shot(0.5, step=steps - 1), "obd",
                            estimator=functools.partial(ij.estimators.ema, decay=decay))
  state = tx.init(params)
  ema = {k: np.zeros(v.shape) for k, v in flat(params).items()}
  for step in range(steps):
    grads = random_grads(params, 100 + step)
    for k, g in flat(grads).items():
      ema[k] = decay * ema[k] + (1 - decay) * np.asarray(g, np.float64) ** 2
    _, state = jax.jit(tx.update)(grads, state, params)
  correction = 1 - decay ** steps
  scores = {k: 0.5 * np.asarray(flat(params)[k], np.float64) ** 2 * ema[k] / correction
            for k in KERNELS}
  allv = np.concatenate([scores[k].ravel() for k in KERNELS])
  k_prune = int(np.floor(0.5 * allv.size + 0.5))
  cut = np.sort(allv)[k_prune - 1]
  for k in KERNELS:
    m = np.asarray(flat(state.masks)[k])
    # Away from the cut (float32 vs float64), the decision must match the reference.
    clear = np.abs(scores[k] - cut) > 1e-5 * abs(cut)
    np.testing.assert_array_equal(m[clear], (scores[k] > cut)[clear])


def test_neurons_and_n_of_m_granularities_in_the_optimizer():
  params = make_params()
  rules = [(r"dense/kernel$", ij.groups.neurons(-1)), (r"head/kernel$", ij.groups.n_of_m(2, 4))]
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5), "magnitude", rules=rules)
  state = tx.init(params)
  updates, state = tx.update(random_grads(params, 0), state, params)
  params = optax.apply_updates(params, updates)
  dense = np.asarray(state.masks["dense"]["kernel"])
  assert np.all(dense.all(axis=0) | ~dense.any(axis=0))  # whole columns
  assert (~dense.all(axis=0)).sum() == 6  # 50% of 12 output units
  head = np.asarray(state.masks["head"]["kernel"])
  np.testing.assert_array_equal(head.reshape(3, 4, 4).sum(axis=1), 2)
  assert np.ndim(state.masks["conv"]["kernel"]) == 0  # unmatched leaves stay dense
  assert np.all(np.asarray(params["head"]["kernel"])[~head] == 0)


def test_erk_allocation_gives_per_leaf_budgets():
  params = make_params()
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.7), "magnitude",
                           selector=ij.select.selector("local", allocation="erk"))
  state = tx.init(params)
  _, state = tx.update(random_grads(params, 0), state, params)
  plan = ij.groups.plan(params)
  budgets = flat(ij.select.erk(params, plan, 0.7))
  for k in KERNELS:
    m = np.asarray(flat(state.masks)[k])
    assert (~m).sum() == int(np.floor(budgets[k] * m.size + 0.5))
  with pytest.raises(ValueError, match="scope='local'"):
    ij.select.selector(allocation="erk")


def test_nonfinite_gradients_fail_eagerly_naming_the_leaf():
  params = make_params()
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5), "fisher")
  state = tx.init(params)
  grads = random_grads(params, 0)
  grads["dense"]["kernel"] = grads["dense"]["kernel"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="dense/kernel"):
    tx.update(grads, state, params)


def test_nonfinite_gradients_never_poison_masks_under_jit():
  params = make_params()
  tx = ij.transforms.prune(optax.sgd(0.0), ij.schedules.polynomial(0.0, 0.5, 0, 4, 1), "fisher")
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update(random_grads(params, 0), state, params)
  bad = random_grads(params, 1)
  bad["conv"]["kernel"] = bad["conv"]["kernel"].at[0, 0, 0, 0].set(jnp.inf)
  _, after = update(bad, state, params)
  chex.assert_trees_all_equal(after.masks, state.masks)
  chex.assert_trees_all_equal(after.estimator_state, state.estimator_state)
  assert int(after.skipped_nonfinite) == 1
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(after.estimator_state.value))


def test_bad_calls_fail_with_clear_messages():
  params = make_params()
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5))
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(random_grads(params, 0), state)
  grads = random_grads(params, 0)
  del grads["head"]
  with pytest.raises(ValueError, match="head/kernel"):
    tx.update(grads, state, params)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    ij.schedules.one_shot(1.5)
  with pytest.raises(ValueError, match="dense/kernel"):
    ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5),
                         rules=[("dense/kernel", ij.groups.n_of_m(2, 5))]).init(params)


def test_composes_in_chain_and_sparsity_report():
  params = make_params()
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   ij.transforms.prune(optax.adam(1e-2), ij.schedules.one_shot(0.25), "taylor"))
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(random_grads(params, 3), state, params)
  params = optax.apply_updates(params, updates)
  masks = masking.find_prune_state(state).masks
  report = ij.transforms.sparsity_report(masks, params)
  assert set(report) == set(KERNELS) | {"global"}
  assert report["global"] == pytest.approx(int(np.floor(0.25 * kernel_sizes(params) + 0.5))
                                           / kernel_sizes(params))
  zeros = sum(int((np.asarray(flat(params)[k]) == 0).sum()) for k in KERNELS)
  assert zeros / kernel_sizes(params) == pytest.approx(report["global"])


def _digits_batch():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(32, 8, 8, 1)), jnp.float32), jnp.asarray(
      rng.integers(0, 10, 32))


@pytest.mark.slow  # over ~10 s
def test_nnx_optimizer_train_step_unchanged():
  x, y = _digits_batch()
  model = ij.models.MLP(64, (32,), 10, rngs=nnx.Rngs(0))
  tx = ij.transforms.prune(optax.adam(1e-2), ij.schedules.polynomial(0.0, 0.75, 0, 4, 2),
                            "taylor")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(8)]
  assert losses[-1] < losses[0]
  masks = ij.flax.masks_of(optimizer)
  for m, w in ((masks["hidden"][0]["kernel"], model.hidden[0].kernel[...]),
               (masks["head"]["kernel"], model.head.kernel[...])):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
  n = 64 * 32 + 32 * 10
  pruned = int((~masks["hidden"][0]["kernel"]).sum() + (~masks["head"]["kernel"]).sum())
  assert pruned == int(np.floor(0.75 * n + 0.5))

  # The NNX optimizer holds an nnx.State; prune_model takes its masks back onto a fresh model.
  fresh = ij.models.MLP(64, (32,), 10, rngs=nnx.Rngs(5))
  ij.flax.prune_model(fresh, masks)
  assert np.all(np.asarray(fresh.hidden[0].kernel[...])[~np.asarray(masks["hidden"][0]["kernel"])] == 0)
  assert int((fresh.head.kernel[...] == 0).sum()) >= int((~masks["head"]["kernel"]).sum())


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def test_linen_train_state_step_unchanged():
  x, y = _digits_batch()
  model = LinenMLP()
  params = model.init(jax.random.key(0), x)["params"]
  tx = ij.transforms.prune(optax.adam(1e-2), ij.schedules.one_shot(0.5, step=1), "obd")
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def step(state):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        state.apply_fn({"params": p}, x), y).mean()
    grads = jax.grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads)

  for _ in range(4):
    state = step(state)
  masks = ij.flax.masks_of(state)
  for layer in ("Dense_0", "Dense_1"):
    w, m = np.asarray(state.params[layer]["kernel"]), np.asarray(masks[layer]["kernel"])
    assert np.all(w[~m] == 0) and np.all(w[m] != 0)
  assert np.ndim(masks["Dense_0"]["bias"]) == 0
  total = 64 * 32 + 32 * 10
  assert int((~masks["Dense_0"]["kernel"]).sum() + (~masks["Dense_1"]["kernel"]).sum()) == \
      int(np.floor(0.5 * total + 0.5))


def test_sparsity_report_has_a_line_per_layer_of_a_stacked_leaf():
  masks = {"w": jnp.asarray(np.array([[[1, 1], [1, 1]], [[0, 1], [0, 0]], [[1, 0], [0, 1]]], bool)),
           "b": jnp.ones((), bool)}
  params = {"w": jnp.ones((3, 2, 2)), "b": jnp.ones(2)}
  the_plan = {"w": ij.groups.per_layer(ij.groups.element(), 0), "b": ij.groups.DENSE}
  report = ij.transforms.sparsity_report(masks, params, the_plan)
  assert report == {"w": 5 / 12, "w[0]": 0.0, "w[1]": 0.75, "w[2]": 0.5, "global": 5 / 12}
  assert "w[0]" not in ij.transforms.sparsity_report(masks, params)


# ------------------------------------------------------------------ held (one-shot) masks
def _held_setup():
  params = random_tree(4, {"dense": {"kernel": (6, 4), "bias": (4,)}, "out": {"kernel": (4, 3)}})
  rng = np.random.default_rng(5)
  masks = {"dense": {"kernel": jnp.asarray(rng.random((6, 4)) < 0.5), "bias": jnp.ones((), bool)},
           "out": {"kernel": jnp.asarray(rng.random((4, 3)) < 0.3)}}
  grads = [jax.tree.map(lambda p, i=i: jnp.asarray(
      np.random.default_rng(10 + i).standard_normal(np.shape(p)), jnp.float32), params)
      for i in range(4)]
  return params, masks, grads


@pytest.mark.parametrize("jit", [False, True])
def test_hold_masks_keeps_the_given_masks_against_a_hand_written_loop(jit):
  params, masks, grads = _held_setup()
  tx = ij.transforms.hold_masks(optax.adam(0.05), masks)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  p = params
  # By hand: Adam on the masked gradients, pruned weights set to zero.
  ref, ref_state = params, optax.adam(0.05).init(params)
  for g in grads:
    updates, state = update(g, state, p)
    p = optax.apply_updates(p, updates)
    u, ref_state = optax.adam(0.05).update(jax.tree.map(lambda g, m: jnp.where(m, g, 0), g, masks),
                                           ref_state, ref)
    ref = jax.tree.map(lambda w, u, m: jnp.where(m, w + u, 0), ref, u, masks)
  chex.assert_trees_all_close(p, ref, rtol=1e-6, atol=1e-7)
  for path in ("dense", "out"):
    kernel, m = np.asarray(p[path]["kernel"]), np.asarray(masks[path]["kernel"])
    assert (kernel[~m] == 0).all() and (kernel[m] != np.asarray(params[path]["kernel"])[m]).all()
  held = ij.transforms.current_masks(state, p)
  np.testing.assert_array_equal(held["out"]["kernel"], masks["out"]["kernel"])
  assert int(masking.find_prune_state(state).count) == len(grads)


def test_prune_refuses_given_masks_that_prune_a_dense_leaf_naming_it():
  params, masks, _ = _held_setup()
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.hold(), rules=[("out/kernel",
                                                                        ij.groups.element())],
                           masks=masks)
  with pytest.raises(ValueError, match="'dense/kernel'.*plan dense"):
    tx.init(params)


@pytest.mark.parametrize("make", [
    lambda: ij.transforms.prune(optax.adamw(1e-2),
                                ij.schedules.polynomial(0.0, 0.5, 0, 4, 2), "magnitude"),
    lambda: ij.transforms.sparse_training(optax.adamw(1e-2), 0.5, method="rigl",
                                          update_every=2, end_step=4),
], ids=["prune", "sparse_training"])
def test_a_train_step_may_donate_the_params_and_the_state(make):
  """Flax train loops jit with ``donate_argnums``: no two leaves of the state share a buffer,
  and the donated steps equal the ones without donation."""
  tx = make()
  params = {"a": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4), "bias": jnp.ones(4)},
            "b": {"kernel": jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)}}

  def step(p, s):
    grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p)))(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  plain, donated = jax.jit(step), jax.jit(step, donate_argnums=(0, 1))
  expected = (params, tx.init(params))
  got = (jax.tree.map(jnp.copy, params), tx.init(params))
  for _ in range(5):
    expected, got = plain(*expected), donated(*got)
  chex.assert_trees_all_close(got, expected)

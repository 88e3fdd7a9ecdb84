"""Straight-through pruning (STE, SR-STE): the forward pass reads the masked weights, every
dense weight receives the gradient taken there, against a hand-written SGD loop."""

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from tests.helpers import random_tree

SHAPES = {"dense1": {"bias": (6,), "kernel": (5, 6)}, "dense2": {"bias": (2,), "kernel": (6, 2)}}


def _loss(p, x, y):
  h = jnp.tanh(x @ p["dense1"]["kernel"] + p["dense1"]["bias"])
  return jnp.mean((h @ p["dense2"]["kernel"] + p["dense2"]["bias"] - y) ** 2)


def _reference(params, batches, lr, decay, sparsity, schedule):
  """SGD by hand: the forward pass reads the masks selected so far (all kept before the first
  selection); the gradient taken at the masked weights updates every dense weight, plus
  ``decay * w`` on the weights that forward pass pruned; on the schedule's update steps new
  masks are selected from ``|w|`` before the step's update, for the next steps."""
  the_plan = ij.groups.plan(params)
  masks = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
  for t, (x, y) in enumerate(batches):
    grads = jax.grad(_loss)(jax.tree.map(lambda p, m: np.where(m, p, 0), params, masks), x, y)
    stepped = jax.tree.map(lambda p, g, m: p - lr * (np.asarray(g) + decay * np.where(m, 0, p)),
                           params, grads, masks)
    if bool(schedule.is_update_step(t)):
      masks = jax.tree.map(lambda m: np.broadcast_to(np.asarray(m), np.shape(m)), ij.select.masks(
          jax.tree.map(jnp.abs, params), the_plan, sparsity))
    params = stepped
  return params, masks


@pytest.mark.parametrize("decay", [0.0, 2e-2])
def test_straight_through_matches_a_hand_written_loop(decay):
  params = random_tree(0, SHAPES)
  rng = np.random.default_rng(1)
  batches = [(jnp.asarray(rng.standard_normal((8, 5)), jnp.float32),
              jnp.asarray(rng.standard_normal((8, 2)), jnp.float32)) for _ in range(9)]
  schedule = ij.schedules.polynomial(0.5, 0.5, 0, 8, 3)  # re-select every 3 steps at 50%
  tx = ij.transforms.prune(optax.sgd(0.1), schedule, "magnitude", straight_through=True,
                           sr_ste_decay=decay)
  state = tx.init(params)

  @jax.jit
  def step(p, state, x, y):
    forward = lambda q: _loss(ij.transforms.straight_through(
        q, ij.transforms.current_masks(state, q)), x, y)
    updates, state = tx.update(jax.grad(forward)(p), state, p)
    return optax.apply_updates(p, updates), state

  p = params
  for x, y in batches:
    p, state = step(p, state, x, y)
  want, want_masks = _reference(params, batches, 0.1, decay, 0.5, schedule)
  chex.assert_trees_all_close(p, want, rtol=1e-5, atol=1e-6)
  masks = ij.transforms.current_masks(state, p)
  assert np.array_equal(np.broadcast_to(masks["dense1"]["kernel"], (5, 6)),
                        want_masks["dense1"]["kernel"])
  kernel = np.asarray(p["dense1"]["kernel"])
  assert (kernel[~np.asarray(masks["dense1"]["kernel"])] != 0).all()  # pruned weights still train


def test_the_forward_reads_masked_weights_and_the_gradient_is_dense():
  params = random_tree(0, SHAPES)
  masks = ij.select.masks(jax.tree.map(jnp.abs, params), ij.groups.plan(params), 0.7)
  x, y = jnp.ones((4, 5)), jnp.zeros((4, 2))
  through = ij.transforms.straight_through(params, masks)
  chex.assert_trees_all_equal(through, ij.transforms.apply_masks(params, masks))
  g_ste = jax.grad(lambda p: _loss(ij.transforms.straight_through(p, masks), x, y))(params)
  g_masked_point = jax.grad(_loss)(ij.transforms.apply_masks(params, masks), x, y)
  chex.assert_trees_all_close(g_ste, g_masked_point)
  assert (np.asarray(g_ste["dense1"]["kernel"])[~np.asarray(masks["dense1"]["kernel"])] != 0).any()


def test_sr_ste_needs_straight_through():
  with pytest.raises(ValueError, match="straight_through=True"):
    ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5), sr_ste_decay=1e-3)


def test_make_train_step_straight_through_equals_the_hand_written_step():
  graphdef, state = nnx.split(ij.models.MLP(5, (6,), 3, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.polynomial(0.5, 0.5, 0, 8, 2),
                           "magnitude", straight_through=True)
  rng = np.random.default_rng(2)
  batches = [{"image": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32),
              "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)} for _ in range(5)]

  @jax.jit
  def by_hand(p, s, batch):
    forward = lambda q: ij.flax.cross_entropy(graphdef, ij.transforms.straight_through(
        q, ij.transforms.current_masks(s, q)), batch)[0]
    grads = jax.grad(forward)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  step = ij.flax.make_train_step(graphdef, tx, straight_through=True)
  got, got_state = params, tx.init(params)
  want, want_state = params, tx.init(params)
  for batch in batches:
    got, got_state, _ = step(got, got_state, batch)
    want, want_state = by_hand(want, want_state, batch)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  masks = ij.transforms.current_masks(got_state, got)
  kernel = np.asarray(got["hidden"][0]["kernel"])
  assert (~np.asarray(masks["hidden"][0]["kernel"])).any()
  assert (kernel[~np.asarray(masks["hidden"][0]["kernel"])] != 0).all()  # dense weights train

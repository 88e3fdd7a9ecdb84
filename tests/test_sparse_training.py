"""Dynamic sparse training: exact per-leaf counts from the density distribution at init and
after every rewiring, RigL's drop and grow equal a numpy reference, grown weights start at
zero, SET and static behave as specified, non-finite steps apply nothing, eager equals jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from impjax.transforms.sparse_training import drop_fraction_at
from tests.helpers import random_tree

SHAPES = {"conv": {"bias": (8,), "kernel": (3, 3, 4, 8)},
          "dense1": {"bias": (32,), "kernel": (72, 32)},
          "dense2": {"bias": (10,), "kernel": (32, 10)}}
KERNELS = ("conv/kernel", "dense1/kernel", "dense2/kernel")


def flat(tree):
  return ij.tree_utils.leaves_by_path(tree)


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_layer_counts_are_whole_exact_and_follow_the_distribution(distribution, sparsity):
  params = random_tree(0, SHAPES)
  the_plan = ij.groups.plan(params)
  counts = flat(ij.select.layer_counts(params, the_plan, sparsity, distribution))
  sizes = {p: int(np.size(x)) for p, x in flat(params).items()}
  total = sum(sizes[p] for p in KERNELS)
  assert sum(counts[p] for p in KERNELS) == total - int(np.floor(sparsity * total + 0.5))
  per_leaf = flat((ij.select.erk if distribution == "erk" else ij.select.uniform)(
      params, the_plan, sparsity))
  for p in KERNELS:
    assert abs(counts[p] - (1 - per_leaf[p]) * sizes[p]) < 1.0 + 1e-9, p
  assert all(counts[p] == sizes[p] for p in sizes if p not in KERNELS)


def _np_rewire(mask, weights, grow_score, fraction):
  """RigL's drop and grow by hand: sorted lists, ties to the earlier index."""
  mask = mask.reshape(-1).copy()
  w, g = np.abs(weights).reshape(-1), grow_score.reshape(-1)
  active = [i for i in range(mask.size) if mask[i]]
  k = int(np.floor(np.float32(fraction) * len(active)))
  for i in sorted(active, key=lambda i: (w[i], i))[:k]:
    mask[i] = False
  candidates = [i for i in range(mask.size) if not mask[i]]
  for i in sorted(candidates, key=lambda i: (-g[i], i))[:k]:
    mask[i] = True
  return mask.reshape(weights.shape)


def _run(method, steps, update_every=3, end_step=12, sparsity=0.8, seed=0, lr=0.1,
         grads_of=None, jit=True):
  params = random_tree(seed, SHAPES)
  tx = ij.transforms.sparse_training(optax.sgd(lr), sparsity, method=method,
                                     update_every=update_every, end_step=end_step, seed=seed)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  history = [(params, state)]
  for t in range(steps):
    grads = grads_of(t) if grads_of else random_tree(100 + t, SHAPES)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, state, grads))
  return history


def test_rigl_grows_the_largest_gradients_and_keeps_every_count():
  history = _run("rigl", steps=13)
  params0, state0 = history[0]
  counts = {p: int(m.sum()) for p, m in flat(state0.masks).items() if p in KERNELS}
  want = flat(ij.select.layer_counts(params0, ij.groups.plan(params0), 0.8, "erk"))
  assert counts == {p: want[p] for p in KERNELS}
  rewired = 0
  for t in range(1, len(history)):
    before_params, before_state = history[t - 1][:2]
    params, state, grads = history[t]
    for p in KERNELS:
      old, new = np.asarray(flat(before_state.masks)[p]), np.asarray(flat(state.masks)[p])
      assert new.sum() == counts[p], (t, p)
      assert not np.asarray(flat(params)[p])[~new].any(), (t, p)  # pruned weights exactly 0
      step = t - 1  # the transform's count when this update ran
      stepped = np.where(old, np.asarray(flat(before_params)[p])
                         - np.float32(0.1) * np.asarray(flat(grads)[p]), 0)
      if step % 3 == 0 and 0 < step < 12:
        fraction = drop_fraction_at(step, 0.3, 12)
        want = _np_rewire(old, stepped, np.abs(np.asarray(flat(grads)[p])), float(fraction))
        np.testing.assert_array_equal(new, want, err_msg=f"step {step} {p}")
        grown = new & ~old
        rewired += int(grown.sum())
        assert not np.asarray(flat(params)[p])[grown].any()  # grown weights start at zero
        np.testing.assert_allclose(np.asarray(flat(params)[p])[new & old], stepped[new & old],
                                   rtol=1e-6)
      else:
        np.testing.assert_array_equal(new, old, err_msg=f"step {step} {p}")
  assert rewired > 0


def test_set_regrows_at_random_and_static_never_rewires():
  set_run, rigl_run, static_run = (_run(m, steps=7) for m in ("set", "rigl", "static"))
  for run in (set_run, static_run):
    counts0 = {p: int(m.sum()) for p, m in flat(run[0][1].masks).items() if p in KERNELS}
    for entry in run[1:]:
      assert {p: int(m.sum()) for p, m in flat(entry[1].masks).items() if p in KERNELS} == counts0
  chex.assert_trees_all_equal(static_run[-1][1].masks, static_run[0][1].masks)
  set_masks, rigl_masks = flat(set_run[-1][1].masks), flat(rigl_run[-1][1].masks)
  assert any(not np.array_equal(set_masks[p], rigl_masks[p]) for p in KERNELS)
  assert any(not np.array_equal(set_masks[p], flat(set_run[0][1].masks)[p]) for p in KERNELS)


def test_eager_equals_jit_and_a_nonfinite_step_applies_nothing():
  eager, jitted = _run("rigl", 5, jit=False), _run("rigl", 5, jit=True)
  chex.assert_trees_all_close(eager[-1][0], jitted[-1][0], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(eager[-1][1].masks, jitted[-1][1].masks)
  nan = lambda t: jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan) if t == 3 else g,
                               random_tree(100 + t, SHAPES))
  run = _run("rigl", 5, grads_of=nan)
  (p3, s3, _), (p4, s4, _) = run[3], run[4]
  chex.assert_trees_all_equal(p3, p4)
  chex.assert_trees_all_equal(s3.masks, s4.masks)
  assert int(s4.count) == int(s3.count) and int(s4.skipped_nonfinite) == 1


def test_bad_options_fail_naming_them():
  params = random_tree(0, SHAPES)
  with pytest.raises(ValueError, match="method"):
    ij.transforms.sparse_training(optax.sgd(0.1), 0.5, method="prune")
  with pytest.raises(ValueError, match="end_step"):
    ij.transforms.sparse_training(optax.sgd(0.1), 0.5, method="rigl")
  with pytest.raises(ValueError, match="below 1"):
    ij.transforms.sparse_training(optax.sgd(0.1), 1.0, method="static")
  with pytest.raises(ValueError, match="distribution"):
    ij.transforms.sparse_training(optax.sgd(0.1), 0.5, method="static",
                                  distribution="random").init(params)
  tx = ij.transforms.sparse_training(optax.sgd(0.1), 0.5, method="static",
                                     rules=[("kernel", ij.groups.neurons())])
  with pytest.raises(ValueError, match="conv/kernel.*neurons"):
    tx.init(params)


def test_a_stacked_leaf_planned_per_layer_keeps_and_rewires_every_layer_on_its_own():
  params = random_tree(3, {"stack": {"kernel": (16, 3, 8)}, "head": {"kernel": (16, 4)}})
  rules = [("stack/kernel", ij.groups.per_layer(ij.groups.element(), layer_axis=1)),
           ("head/kernel", ij.groups.element())]
  tx = ij.transforms.sparse_training(optax.sgd(0.1), 0.75, method="rigl", update_every=2,
                                     end_step=8, distribution="uniform", rules=rules)
  state = tx.init(params)
  total = int(flat(ij.select.layer_counts(params, ij.groups.plan(params, rules), 0.75,
                                          "uniform"))["stack/kernel"])
  want = [total // 3 + (i < total % 3) for i in range(3)]
  update = jax.jit(tx.update)
  for t in range(7):
    grads = random_tree(200 + t, {"stack": {"kernel": (16, 3, 8)}, "head": {"kernel": (16, 4)}})
    old = np.asarray(state.masks["stack"]["kernel"])
    stepped = np.where(old, np.asarray(params["stack"]["kernel"])
                       - np.float32(0.1) * np.asarray(grads["stack"]["kernel"]), 0)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    new = np.asarray(state.masks["stack"]["kernel"])
    assert [int(new[:, i].sum()) for i in range(3)] == want, t
    if t % 2 == 0 and 0 < t < 8:  # each layer's drop and grow, by hand, on its own slice
      fraction = float(drop_fraction_at(t, 0.3, 8))
      for i in range(3):
        np.testing.assert_array_equal(
            new[:, i], _np_rewire(old[:, i], stepped[:, i],
                                  np.abs(np.asarray(grads["stack"]["kernel"])[:, i]), fraction),
            err_msg=f"step {t} layer {i}")
      assert (new != old).any(), t
    else:
      np.testing.assert_array_equal(new, old)

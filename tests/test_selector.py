"""Selection options as one value: the selector's checks, budgets and use by every consumer."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij

PARAMS = {"a": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)},
          "b": {"kernel": jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)}}
PLAN = ij.groups.plan(PARAMS)


@pytest.mark.parametrize("kwargs, field", [
    ({"reduce": "median"}, "reduce"), ({"normalizer": "z"}, "normalizer"),
    ({"allocation": "dense"}, "allocation"), ({"allocation": "erk"}, "allocation='erk'"),
    ({"scope": 3}, "scope"), ({"floor": 1.5}, "floor"), ({"floor": "1%"}, "floor")])
def test_selector_refuses_fields_that_cannot_work(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ij.select.selector(**kwargs)


def test_budget_scales_the_allocation_with_the_schedule():
  erk = ij.select.selector("local", allocation="erk")
  final = ij.select.erk(PARAMS, PLAN, 0.8)
  half = erk.budget(PARAMS, PLAN, 0.4, 0.8)
  for path in ("a", "b"):
    assert float(half[path]["kernel"]) == pytest.approx(0.5 * float(final[path]["kernel"]))
  assert ij.select.selector().budget(PARAMS, PLAN, 0.4, 0.8) == 0.4
  zero = erk.budget(PARAMS, PLAN, 0.0, 0.0)
  assert all(float(v) == 0.0 for v in jax.tree.leaves(zero))


def test_masks_follow_the_selector_eager_and_jit():
  imp = ij.scores.magnitude(PARAMS)
  local = ij.select.selector("local")
  eager = ij.select.masks(imp, PLAN, 0.5, local)
  jitted = jax.jit(lambda i, s: ij.select.masks(i, PLAN, s, local))(imp, jnp.float32(0.5))
  for path in ("a", "b"):
    m = np.asarray(eager[path]["kernel"])
    np.testing.assert_array_equal(m, np.asarray(jitted[path]["kernel"]))
    assert (~m).sum() == m.size // 2  # every leaf at its own 50%
    w = np.abs(np.asarray(PARAMS[path]["kernel"]))
    assert w[m].min() >= w[~m].max()


def test_prune_takes_the_selector():
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  tx = ij.transforms.prune(optax.sgd(0.0), ij.schedules.one_shot(0.5), "magnitude",
                           selector=ij.select.selector("local"))
  _, state = tx.update(grads, tx.init(PARAMS), PARAMS)
  by_hand = ij.select.masks(ij.scores.magnitude(PARAMS), PLAN, 0.5, ij.select.selector("local"))
  for path in ("a", "b"):
    np.testing.assert_array_equal(state.masks[path]["kernel"], by_hand[path]["kernel"])


def test_get_path_reads_dicts_lists_and_nnx_submodules():
  class Net(nnx.Module):
    def __init__(self):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(0)) for _ in range(2)])
  net = Net()
  assert ij.tree_utils.get_path(net, "layers/1") is net.layers[1]
  assert ij.tree_utils.get_path({"a": [1, {"b": 2}]}, "a/1/b") == 2
  assert ij.tree_utils.get_path({"layers": {0: {"w": 3}}}, "layers/0/w") == 3
  with pytest.raises(ValueError, match="'layers/2'"):
    ij.tree_utils.get_path(net, "layers/2")
  with pytest.raises(ValueError, match="'a/c'"):
    ij.tree_utils.get_path({"a": {"b": 1}}, "a/c")

"""Tests for impjax.select.bits: allocators against brute force and numpy loops, eager and jitted;
tree helpers; budgets; errors naming leaves."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import select
from tests.helpers import eager_and_jit


def random_instance(seed, units=5, choices=(2, 3, 4)):
  rng = np.random.default_rng(seed)
  sizes = rng.choice([4, 8, 12, 16], size=units)
  costs = sizes[:, None] * np.asarray(choices)[None, :]
  # Sensitivity falls with bits, at a unit-specific rate (not always convex).
  table = np.sort(rng.random((units, len(choices))) * rng.random((units, 1)) * 10, axis=1)[:, ::-1]
  return table.astype(np.float32), costs, sizes


def brute_force_best(table, costs, budget):
  best = np.inf
  for pick in itertools.product(range(table.shape[1]), repeat=table.shape[0]):
    rows = np.arange(table.shape[0])
    if costs[rows, pick].sum() <= budget:
      best = min(best, float(table[rows, pick].astype(np.float64).sum()))
  return best


@pytest.mark.parametrize("seed", range(2))
def test_knapsack_is_optimal_against_brute_force(seed):
  table, costs, sizes = random_instance(seed)
  for avg in (2.0, 2.5, 3.1, 4.0)[seed::2] + (3.4,):
    budget = int(np.floor(avg * sizes.sum()))
    eager = eager_and_jit(lambda t, budget=budget: select.knapsack(t, costs, budget), table)
    rows = np.arange(len(sizes))
    chosen = np.asarray(eager)
    assert costs[rows, chosen].sum() <= budget
    np.testing.assert_allclose(table[rows, chosen].astype(np.float64).sum(),
                               brute_force_best(table, costs, budget), rtol=1e-6)


def np_greedy(table, costs, budget):
  """Reference loop: best feasible upgrade by removed sensitivity per extra cost."""
  chosen = np.zeros(len(table), int)
  spent = costs[:, 0].sum()
  while True:
    best, pick = -np.inf, None
    for u in range(len(table)):
      for c in range(chosen[u] + 1, table.shape[1]):
        gain = table[u, chosen[u]] - table[u, c]
        extra = costs[u, c] - costs[u, chosen[u]]
        if gain > 0 and extra <= budget - spent and np.float32(gain) / np.float32(extra) > best:
          best, pick = np.float32(gain) / np.float32(extra), (u, c)
    if pick is None:
      return chosen
    spent += costs[pick[0], pick[1]] - costs[pick[0], chosen[pick[0]]]
    chosen[pick[0]] = pick[1]


@pytest.mark.parametrize("seed", range(2))
def test_greedy_matches_reference_loop(seed):
  table, costs, sizes = random_instance(seed, units=6)
  for avg in (2.0, 2.7, 3.5, 4.0)[seed::2] + (3.2,):
    budget = int(np.floor(avg * sizes.sum()))
    eager = eager_and_jit(lambda t, budget=budget: select.greedy(t, costs, budget), table)
    np.testing.assert_array_equal(eager, np_greedy(table, costs, budget))


def test_knapsack_beats_greedy_where_greedy_is_myopic():
  # Greedy first takes unit 1's best ratio (3 per 2 bits), after which unit 0's larger gain
  # (6 per 5 bits) no longer fits; the optimum upgrades unit 0 alone.
  table = np.array([[6.0, 0.0], [3.0, 0.0], [2.0, 0.0]], np.float32)
  costs = np.array([[1, 6], [1, 3], [1, 4]])
  assert select.knapsack(table, costs, 8).tolist() == [1, 0, 0]
  assert select.greedy(table, costs, 8).tolist() == [0, 1, 1]


def np_lowering(importance, sizes, low, high, avg):
  order = np.argsort(importance, kind="stable")
  bits = np.full(len(sizes), high)
  for u in order:
    if (bits * sizes).sum() <= avg * sizes.sum():
      break
    bits[u] = low
  return (bits == high).astype(int)


def test_lowering_matches_reference_and_meets_the_average():
  rng = np.random.default_rng(0)
  sizes = rng.choice([3, 5, 8], size=20)
  importance = rng.random(20).astype(np.float32)
  importance[[3, 7]] = importance[5]  # ties: the earlier unit drops first
  for low, high, avg in ((2, 4, 3.0), (3, 5, 4.4), (2, 8, 2.0), (4, 6, 6.0)):
    eager = eager_and_jit(lambda i, a=(low, high, avg): select.lowering(i, sizes, *a), importance)
    np.testing.assert_array_equal(eager, np_lowering(importance, sizes, low, high, avg))
    bits = np.where(np.asarray(eager) == 1, high, low)
    assert (bits * sizes).sum() <= avg * sizes.sum()


PARAMS = {"a": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
          "b": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
PER_CHANNEL = groups.plan(PARAMS, [("kernel", groups.neurons(-1))])
PER_LEAF = groups.plan(PARAMS, [("kernel", groups.leaf())])


def test_unit_sizes_and_to_bits_shapes():
  sizes = select.unit_sizes(PARAMS, PER_CHANNEL)
  assert sizes["a"]["kernel"].tolist() == [4, 4, 4] and sizes["b"]["bias"].shape == (0,)
  idx = {"a": {"kernel": jnp.array([0, 1, 2]), "bias": jnp.zeros(0, int)},
         "b": {"kernel": jnp.array([2, 0]), "bias": jnp.zeros(0, int)}}
  bits = select.to_bits(idx, (2, 4, 8), PARAMS, PER_CHANNEL)
  assert bits["a"]["kernel"].tolist() == [[2, 4, 8]] and bits["a"]["bias"] is None
  assert bits["b"]["kernel"].tolist() == [[8, 2]]
  leaf_idx = {"a": {"kernel": jnp.array([1]), "bias": jnp.zeros(0, int)},
              "b": {"kernel": jnp.array([0]), "bias": jnp.zeros(0, int)}}
  mixed = select.to_bits(leaf_idx, (4, "bfloat16"), PARAMS, PER_LEAF)
  assert mixed["a"]["kernel"] == "bfloat16" and mixed["b"]["kernel"] == 4
  with pytest.raises(ValueError, match="'a/kernel'.*float-format choices"):
    select.to_bits(idx, (4, 8, "bfloat16"), PARAMS, PER_CHANNEL)


def tree_table(rows_a, rows_b):
  return {"a": {"kernel": jnp.asarray(rows_a, jnp.float32), "bias": jnp.zeros((0, 3))},
          "b": {"kernel": jnp.asarray(rows_b, jnp.float32), "bias": jnp.zeros((0, 3))}}


def test_allocate_tree_matches_flat_knapsack_and_budgets():
  rng = np.random.default_rng(5)
  table = tree_table(np.sort(rng.random((3, 3)), 1)[:, ::-1], np.sort(rng.random((2, 3)), 1)[:, ::-1])
  choices = (2, 4, 8)
  for method, solver in (("knapsack", select.knapsack), ("greedy", select.greedy)):
    bits = select.allocate(table, PARAMS, PER_CHANNEL, choices, avg_bits=4.5, method=method)
    flat_table = np.concatenate([table["a"]["kernel"], table["b"]["kernel"]])
    sizes = np.array([4, 4, 4, 2, 2])
    want = solver(flat_table, sizes[:, None] * np.array(choices), int(4.5 * sizes.sum()))
    got = np.concatenate([np.ravel(bits["a"]["kernel"]), np.ravel(bits["b"]["kernel"])])
    np.testing.assert_array_equal(got, np.array(choices)[np.asarray(want)])
    assert select.average_bits(bits, PARAMS) <= 4.5 and bits["a"]["bias"] is None
  by_bytes = select.allocate(table, PARAMS, PER_CHANNEL, choices, nbytes=9)  # 72 bits
  assert select.average_bits(by_bytes, PARAMS) * 16 <= 72


def test_allocate_errors_name_leaves():
  table = tree_table(np.ones((3, 3)), np.ones((2, 3)))
  with pytest.raises(ValueError, match="exactly one budget"):
    select.allocate(table, PARAMS, PER_CHANNEL, (2, 4, 8))
  with pytest.raises(ValueError, match="below the cheapest"):
    select.allocate(table, PARAMS, PER_CHANNEL, (2, 4, 8), avg_bits=1.5)
  with pytest.raises(ValueError, match="strictly increasing"):
    select.allocate(table, PARAMS, PER_CHANNEL, (4, 2, 8), avg_bits=4)
  bad = tree_table(np.ones((3, 2)), np.ones((2, 3)))
  with pytest.raises(ValueError, match=r"table leaf 'a/kernel' has shape \(3, 2\)"):
    select.allocate(bad, PARAMS, PER_CHANNEL, (2, 4, 8), avg_bits=4)
  nan = tree_table(np.full((3, 3), np.nan), np.ones((2, 3)))
  with pytest.raises(ValueError, match=r"non-finite.*a/kernel"):
    select.allocate(nan, PARAMS, PER_CHANNEL, (2, 4, 8), avg_bits=4)
  with pytest.raises(ValueError, match="method"):
    select.allocate(table, PARAMS, PER_CHANNEL, (2, 4, 8), avg_bits=4, method="ilp")


def test_gain_per_bit_and_order_bits():
  table = tree_table([[9.0, 5.0, 1.0], [4.0, 3.0, 2.0], [1.0, 1.0, 1.0]], [[8.0, 2.0, 0.0]] * 2)
  gain = select.gain_per_bit(table, PARAMS, PER_CHANNEL, (2, 4, 8), 2, 8)
  # (t[:, 2 bits] - t[:, 8 bits]) / (size * 6)
  np.testing.assert_allclose(gain["a"]["kernel"], [8 / 24, 2 / 24, 0.0], rtol=1e-6)
  np.testing.assert_allclose(gain["b"]["kernel"], [8 / 12, 8 / 12], rtol=1e-6)
  bits = select.order_bits(gain, PARAMS, PER_CHANNEL, 2, 8, 5.0)
  # 16 weights at 8 bits; saving 48 bits lowers a/kernel units 2 then 1 (4 weights each).
  assert bits["a"]["kernel"].tolist() == [[8, 2, 2]] and bits["b"]["kernel"].tolist() == [[8, 8]]
  with pytest.raises(ValueError, match=r"importance leaf 'a/kernel' has shape \(2,\)"):
    select.order_bits({"a": {"kernel": jnp.ones(2), "bias": jnp.zeros(0)},
                       "b": {"kernel": jnp.ones(2), "bias": jnp.zeros(0)}},
                      PARAMS, PER_CHANNEL, 2, 8, 5.0)
  with pytest.raises(ValueError, match="low < high"):
    select.lowering(jnp.ones(2), np.ones(2), 4, 4, 4.0)


def test_salient_channels_and_average_bits():
  rng = np.random.default_rng(1)
  imp = {"a": {"kernel": jnp.asarray(rng.random((8, 3)), jnp.float32), "bias": jnp.ones(3)},
         "b": {"kernel": jnp.asarray(rng.random((2, 2)), jnp.float32), "bias": jnp.ones(2)}}
  plan = groups.plan(imp, [("kernel", groups.element())])
  eager = eager_and_jit(lambda t: select.salient_channels(t, plan, 0.25), imp)
  rows = np.asarray(imp["a"]["kernel"]).sum(1)
  want = np.zeros(8, bool)
  want[np.argsort(-rows)[:2]] = True
  np.testing.assert_array_equal(np.ravel(eager["a"]["kernel"]), want)
  assert eager["a"]["kernel"].shape == (8, 1) and eager["a"]["bias"] is None
  bits = {"a": {"kernel": 2, "bias": None}, "b": {"kernel": 2, "bias": None}}
  params = {"a": {"kernel": jnp.ones((8, 3)), "bias": jnp.ones(3)},
            "b": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  # a: 6 of 24 weights at 8 bits; b: 2 rows, top 25% rounds to none.
  assert select.average_bits(bits, params, eager) == pytest.approx((6 * 8 + 18 * 2 + 4 * 2) / 28)
  with pytest.raises(ValueError, match="fraction"):
    select.salient_channels(imp, plan, 1.5)


def test_bits_of():
  assert [select.bits_of(c) for c in (2, 8, "float8_e5m2", "bfloat16")] == [2, 8, 8, 16]


@pytest.mark.parametrize("g, want_shape", [
    (groups.per_layer(groups.leaf(), 1), (1, 3, 1)),
    (groups.per_layer(groups.neurons(0), 1), (4, 3, 1)),
    (groups.per_layer(groups.neurons(-1), 1), (1, 3, 2))])
def test_bits_of_a_stacked_leaf_vary_per_layer(g, want_shape):
  p = {"k": jnp.ones((4, 3, 2))}  # layer axis 1
  units = groups.num_groups((4, 3, 2), g)
  idx = jnp.arange(units) % 3
  bits = select.to_bits({"k": idx}, (2, 4, 8), p, {"k": g})["k"]
  assert bits.shape == want_shape
  # By hand: unit u of layer l is entry l * (units per layer) + u of the flat choice vector.
  per_layer = np.asarray([2, 4, 8])[np.asarray(idx)].reshape(3, -1)
  full = np.broadcast_to(np.asarray(bits), (4, 3, 2))
  for layer in range(3):
    got = full[:, layer]
    if g.kind == "leaf":
      assert (got == per_layer[layer, 0]).all()
    elif g.axis == 0:
      np.testing.assert_array_equal(got[:, 0], per_layer[layer])
    else:
      np.testing.assert_array_equal(got[0], per_layer[layer])

"""Tests for impjax.groups: reductions, expansion, path rules and normalizers vs numpy."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import tree_utils
from tests.helpers import eager_and_jit, random_tree

HOW = {"sum": np.sum, "mean": np.mean, "max": np.max, "l2": lambda v: np.sqrt(np.sum(v**2))}


def _scores(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _reduce_all(x, g):
  """reduce_leaf with every reduction, eager and jitted (one compile); returns eager."""
  def all_hows(x):
    return {how: groups.reduce_leaf(x, g, how) for how in HOW}
  eager = eager_and_jit(all_hows, x, rtol=1e-6, atol=1e-6)
  return {how: np.asarray(v) for how, v in eager.items()}


# --- reduce_leaf ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((3, 3, 2, 4), -1), ((3, 3, 2, 4), 0),
                                        ((3, 3, 2, 4), 2), ((6, 5), 0), ((6, 5), 1),
                                        ((6, 5), -2), ((7,), 0)])
def test_reduce_neurons(shape, axis):
  x = _scores(shape)
  got = _reduce_all(x, groups.neurons(axis))
  xs = np.asarray(x, np.float64)
  ax = axis % len(shape)
  for how, fn in HOW.items():
    ref = np.array([fn(np.take(xs, u, axis=ax)) for u in range(shape[ax])])
    assert got[how].shape == (shape[ax],)
    np.testing.assert_allclose(got[how], ref, rtol=1e-5, atol=1e-6, err_msg=how)
  assert groups.num_groups(shape, groups.neurons(axis)) == shape[ax]


@pytest.mark.parametrize("shape,block", [((8, 6), (2, 3)), ((8, 6), (4, 1)),
                                         ((3, 3, 2, 4), (3, 3, 1, 2)), ((8, 6), (8, 6))])
def test_reduce_blocks(shape, block):
  x = _scores(shape, seed=1)
  got = _reduce_all(x, groups.blocks(block))
  xs = np.asarray(x, np.float64)
  grid = [s // b for s, b in zip(shape, block)]
  for how, fn in HOW.items():
    ref = []
    for cell in itertools.product(*[range(n) for n in grid]):  # row-major over the block grid
      region = tuple(slice(c * b, (c + 1) * b) for c, b in zip(cell, block))
      ref.append(fn(xs[region]))
    np.testing.assert_allclose(got[how], ref, rtol=1e-5, atol=1e-6, err_msg=how)
  assert got["sum"].size == groups.num_groups(shape, groups.blocks(block)) == np.prod(grid)


def test_reduce_element_leaf_n_of_m_dense():
  x = _scores((4, 6), seed=2)
  xs = np.asarray(x, np.float64)
  for g in (groups.element(), groups.n_of_m(2, 4)):
    for how, v in _reduce_all(x, g).items():
      np.testing.assert_array_equal(v, xs.astype(np.float32).ravel(), err_msg=how)
    assert groups.num_groups((4, 6), g) == 24
  for how, v in _reduce_all(x, groups.leaf()).items():
    np.testing.assert_allclose(v, [HOW[how](xs)], rtol=1e-5, err_msg=how)
  assert groups.num_groups((4, 6), groups.leaf()) == 1
  for v in _reduce_all(x, groups.DENSE).values():
    assert v.shape == (0,) and v.dtype == np.float32
  assert groups.num_groups((4, 6), groups.DENSE) == 0


def test_reduce_values_by_hand():
  x = jnp.array([[1.0, -2.0], [3.0, 4.0]])
  np.testing.assert_allclose(groups.reduce_leaf(x, groups.neurons(-1), "l2"), [10**0.5, 20**0.5])
  np.testing.assert_allclose(groups.reduce_leaf(x, groups.neurons(0), "max"), [1.0, 4.0])
  np.testing.assert_allclose(groups.reduce_leaf(x, groups.neurons(0), "mean"), [-0.5, 3.5])


def test_unknown_reduction_raises():
  with pytest.raises(ValueError, match="Unknown reduction 'median'"):
    groups.reduce_leaf(jnp.ones((2, 2)), groups.neurons(), "median")


@pytest.mark.parametrize("make", [lambda: groups.n_of_m(3, 2), lambda: groups.n_of_m(0, 4),
                                  lambda: groups.blocks(()), lambda: groups.blocks((2, 0))])
def test_bad_granularity_arguments(make):
  with pytest.raises(ValueError):
    make()


# --- expand_leaf ------------------------------------------------------------------------------


def _expand_ref(gm, g, shape):
  """Element mask from a flat group mask, by looping over elements."""
  out = np.zeros(shape, bool)
  for idx in np.ndindex(*shape):
    if g.kind == "element" or g.kind == "n_of_m":
      out[idx] = gm[np.ravel_multi_index(idx, shape)]
    elif g.kind == "neurons":
      out[idx] = gm[idx[g.axis % len(shape)]]
    elif g.kind == "blocks":
      grid = [s // b for s, b in zip(shape, g.block)]
      cell = tuple(i // b for i, b in zip(idx, g.block))
      out[idx] = gm[np.ravel_multi_index(cell, grid)]
    elif g.kind == "leaf":
      out[idx] = gm[0]
    else:
      out[idx] = True
  return out


@pytest.mark.parametrize("g", [groups.element(), groups.n_of_m(1, 2), groups.neurons(-1),
                               groups.neurons(0), groups.neurons(1), groups.blocks((2, 1, 2)),
                               groups.blocks((1, 3, 1)), groups.leaf(), groups.DENSE])
def test_expand_leaf_inverts_reduce(g):
  shape = (4, 3, 2)
  n = groups.num_groups(shape, g)
  assert groups.reduce_leaf(_scores(shape), g).shape == (n,)
  gm = np.random.default_rng(5).random(n) < 0.5
  if n > 1:
    gm[0], gm[1] = True, False  # both values present
  eager = eager_and_jit(functools.partial(groups.expand_leaf, g=g, shape=shape), jnp.asarray(gm))
  assert eager.dtype == jnp.bool_
  if g.kind == "dense":
    assert eager.shape == ()
  if g.kind == "leaf":
    assert eager.shape == ()
  full = np.broadcast_to(np.asarray(eager), shape)
  np.testing.assert_array_equal(full, _expand_ref(gm, g, shape))
  if n:  # a group is kept iff its expanded elements are (reduce "max" of the expanded mask)
    back = groups.reduce_leaf(jnp.asarray(full, jnp.float32), g, "max")
    np.testing.assert_array_equal(np.asarray(back) > 0, gm)


# --- plan and rules ---------------------------------------------------------------------------


def _mixed_params():
  shapes = {  # keys sorted: the order of the draws
      "conv": {"bias": (8,), "kernel": (3, 3, 1, 8)},
      "dense1": {"bias": (16,), "kernel": (32, 16)},
      "dense2": {"bias": (10,), "kernel": (16, 10)},
      "embed": {"embedding": (20, 8)},
      "head": {"kernel_init_scale": (), "w": (10, 4)},
      "norm": {"bias": (8,), "scale": (8,)},
      "pos_embeddings": (5, 8),
  }
  return random_tree(3, shapes)


def test_plan_default_rules():
  p = groups.plan(_mixed_params())
  kinds = dict(zip(_paths(p), [g.kind for g in jax.tree.leaves(p)]))
  assert kinds == {
      "conv/bias": "dense", "conv/kernel": "element",
      "dense1/bias": "dense", "dense1/kernel": "element",
      "dense2/bias": "dense", "dense2/kernel": "element",
      "embed/embedding": "dense",
      "head/kernel_init_scale": "dense", "head/w": "dense",
      "norm/bias": "dense", "norm/scale": "dense",
      "pos_embeddings": "dense",
  }


def _paths(tree):
  return tree_utils.path_names(tree)


def test_plan_custom_rules_first_match_wins():
  rules = [
      (r"^dense1/", groups.neurons(-1)),       # matches kernel and bias of dense1
      (r"^conv/kernel$", groups.neurons(-1)),
      (r"kernel$", groups.n_of_m(2, 4)),        # dense1 and conv kernels matched above
      (r"kernel$", groups.element()),           # never reached for kernels
      (r"^head/w$", groups.blocks((5, 2))),
      (r"^embed/", groups.leaf()),
  ]
  p = groups.plan(_mixed_params(), rules)
  got = dict(zip(_paths(p), jax.tree.leaves(p)))
  assert got["dense1/kernel"] == groups.neurons(-1)
  assert got["dense1/bias"] == groups.neurons(-1)
  assert got["dense2/kernel"] == groups.n_of_m(2, 4)
  assert got["conv/kernel"] == groups.neurons(-1)
  assert got["head/w"] == groups.blocks((5, 2))
  assert got["embed/embedding"] == groups.leaf()
  for path in ("conv/bias", "dense2/bias", "norm/scale", "norm/bias", "pos_embeddings",
               "head/kernel_init_scale"):
    assert got[path] == groups.DENSE
  assert groups.plan(_mixed_params(), []) == jax.tree.map(lambda _: groups.DENSE,
                                                         _mixed_params())


@pytest.mark.parametrize("rule,path", [
    ((r"dense2/kernel", groups.n_of_m(2, 3)), "dense2/kernel"),     # 16 % 3
    ((r"dense1/kernel", groups.n_of_m(1, 4, axis=1)), None),        # 16 % 4 == 0: fine
    ((r"dense2/kernel", groups.n_of_m(2, 4, axis=1)), "dense2/kernel"),  # 10 % 4
    ((r"conv/kernel", groups.n_of_m(2, 4, axis=2)), "conv/kernel"),      # 1 % 4
    ((r"dense1/kernel", groups.blocks((3, 4))), "dense1/kernel"),   # 32 % 3
    ((r"dense1/kernel", groups.blocks((4,))), "dense1/kernel"),     # rank mismatch
    ((r"dense2/bias", groups.neurons(1)), "dense2/bias"),           # no axis 1
    ((r"dense2/bias", groups.n_of_m(1, 2)), None),                  # 10 % 2 == 0
])
def test_plan_rejects_what_does_not_fit_naming_the_leaf(params, rule, path):
  if path is None:
    groups.plan(params, [rule])
    return
  with pytest.raises(ValueError, match=path):
    groups.plan(params, [rule])


def test_reduce_and_expand_trees(params):
  rules = [(r"dense1/kernel", groups.neurons(-1)), (r"dense2/kernel", groups.blocks((4, 5))),
           (r"conv/kernel", groups.element())]
  the_plan = groups.plan(params, rules)
  scores = jax.tree.map(jnp.abs, params)
  reduced = groups.reduce(scores, the_plan, "sum")
  a = np.abs(np.asarray(params["dense1"]["kernel"], np.float64))
  np.testing.assert_allclose(reduced["dense1"]["kernel"], a.sum(axis=0), rtol=1e-5)
  b = np.abs(np.asarray(params["dense2"]["kernel"], np.float64))
  np.testing.assert_allclose(reduced["dense2"]["kernel"],
                             b.reshape(4, 4, 2, 5).sum(axis=(1, 3)).ravel(), rtol=1e-5)
  np.testing.assert_array_equal(reduced["conv"]["kernel"],
                                np.abs(np.asarray(params["conv"]["kernel"])).ravel())
  assert reduced["dense1"]["bias"].shape == (0,)
  group_masks = jax.tree.map(lambda r: r > jnp.median(r) if r.size else r > 0, reduced)
  masks = groups.expand(group_masks, the_plan, params)
  m = np.broadcast_to(masks["dense1"]["kernel"], (32, 16))
  np.testing.assert_array_equal(m, np.broadcast_to(a.sum(axis=0) > np.median(a.sum(axis=0)),
                                                   (32, 16)))
  assert masks["dense1"]["bias"].shape == () and bool(masks["dense1"]["bias"])
  missing = {k: dict(v) for k, v in scores.items()}
  del missing["conv"]["bias"]
  with pytest.raises(ValueError, match="conv/bias"):
    groups.reduce(missing, the_plan)


# --- normalizers ------------------------------------------------------------------------------


def _lamp_ref(s):
  """LAMP (Lee et al. 2021): sort ascending (stable); score(u) = s_u^2 / sum_{v >= u} s_v^2."""
  s = np.asarray(s, np.float64)
  order = np.argsort(s, kind="stable")
  out = np.zeros_like(s)
  for pos, u in enumerate(order):
    out[u] = s[u] ** 2 / sum(s[v] ** 2 for v in order[pos:])
  return out


@pytest.mark.parametrize("how", ["none", "l2", "max", "lamp"])
def test_normalize(how):
  rng = np.random.default_rng(4)
  tree = {"a": jnp.asarray(rng.random(12), jnp.float32),
          "b": jnp.asarray(rng.integers(0, 4, 12), jnp.float32),  # ties and zeros
          "c": jnp.zeros((0,), jnp.float32)}
  eager = eager_and_jit(functools.partial(groups.normalize, how=how), tree, rtol=1e-6, atol=1e-7)
  ref_fn = {"none": lambda s: s, "l2": lambda s: s / np.linalg.norm(s),
            "max": lambda s: s / np.max(np.abs(s)), "lamp": _lamp_ref}[how]
  for key in "ab":
    s = np.asarray(tree[key], np.float64)
    np.testing.assert_allclose(eager[key], ref_fn(s), rtol=1e-6, atol=1e-7)
  assert eager["c"].shape == (0,)


def test_lamp_by_hand():
  # sorted [1, 2, 2, 4], squared [1, 4, 4, 16]: 1/25, 4/24, 4/20, 16/16 (equal scores by
  # position); a single score -> 1.
  lamp = jax.jit(groups.lamp)
  np.testing.assert_allclose(lamp(jnp.array([2.0, 1.0, 4.0, 2.0])),
                             [4 / 24, 1 / 25, 1.0, 4 / 20], rtol=1e-6)
  np.testing.assert_allclose(lamp(jnp.array([3.5])), [1.0], rtol=1e-6)


def test_normalize_all_zero_leaf_stays_finite():
  for how in ("l2", "max", "lamp"):
    out = groups.normalize({"z": jnp.zeros(4)}, how)["z"]
    np.testing.assert_array_equal(out, 0.0)


def test_max_normalizer_keeps_the_order_of_signed_scores():
  s = jnp.array([-4.0, -1.0, 2.0])
  for scores in (s, s - 3.0):  # mixed signs, and all negative
    out = np.asarray(groups.normalize({"s": scores}, "max")["s"])
    np.testing.assert_allclose(out, np.asarray(scores) / np.max(np.abs(scores)), rtol=1e-6)
    assert np.all(np.diff(out) > 0)


def test_lamp_names_a_leaf_with_negative_scores():
  with pytest.raises(ValueError, match="leaf 'layer/kernel' has negative"):
    groups.normalize({"layer": {"kernel": jnp.array([1.0, -0.5])}}, "lamp")


def test_unknown_normalizer_raises():
  with pytest.raises(ValueError, match="Unknown normalizer 'softmax'"):
    groups.normalize({"a": jnp.ones(2)}, "softmax")


# ---------------------------------------------------------------- stacked (per-layer) leaves
@pytest.mark.parametrize("g", [groups.neurons(-1), groups.element(), groups.leaf(),
                               groups.blocks((2, 1, 3))])
def test_per_layer_reduces_and_expands_each_layer_on_its_own(g):
  rng = np.random.default_rng(0)
  score = rng.standard_normal((4, 3, 6)).astype(np.float32)  # (in, layers, out): layer axis 1
  stacked = groups.per_layer(g, layer_axis=1)
  inner = {"neurons": groups.neurons(-1), "element": groups.element(), "leaf": groups.leaf(),
           "blocks": groups.blocks((2, 3))}[g.kind]
  # By hand: each layer's (in, out) slice reduced as its own leaf, layer after layer.
  want = np.concatenate([np.asarray(groups.reduce_leaf(score[:, i], inner)) for i in range(3)])
  got = groups.reduce_leaf(jnp.asarray(score), stacked)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(groups.reduce_leaf, static_argnums=1)(score, stacked), got)
  assert groups.num_groups(score.shape, stacked) == want.size
  keep = jnp.asarray(rng.random(want.size) < 0.5)
  mask = np.broadcast_to(groups.expand_leaf(keep, stacked, score.shape), score.shape)
  per_layer = np.split(np.asarray(keep), 3)
  for i in range(3):
    slice_mask = np.broadcast_to(groups.expand_leaf(jnp.asarray(per_layer[i]), inner, (4, 6)),
                                 (4, 6))
    np.testing.assert_array_equal(mask[:, i], slice_mask)


@pytest.mark.parametrize("g, match", [(groups.neurons(0), "layer axis"),
                                      (groups.blocks((2, 1, 3)), "span layers")])
def test_per_layer_refuses_units_across_layers_naming_the_leaf(g, match):
  with pytest.raises(ValueError, match=f"'w'.*{match}"):
    groups.plan({"w": jnp.ones((2, 4, 6))}, [("w", groups.per_layer(g, 0))])

"""Tests for impjax.select: exact top-k, N:M, thresholds, allocation and masks vs numpy.

The numpy references sort explicitly (stable, by value, then by global position: leaf order,
then flat index), so they are independent of the library's bisection-based selection.
"""

import decimal
import fractions
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups, select, tree_utils
from tests.helpers import random_tree

# One set of shapes for most top-k tests: eager dispatch compiles every op per shape once.
SHAPES = {"conv": {"kernel": (3, 3, 1, 8)}, "dense": {"bias": (10,), "kernel": (16, 10)}}
N_TOTAL = 72 + 160 + 10


def _tied(rng, shape):
  x = rng.integers(-3, 4, shape).astype(np.float32)
  x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
  return x


def tied_scores(seed):
  """Integer-valued scores in [-3, 3] (heavy ties), with about half of the zeros as -0.0."""
  return random_tree(seed, SHAPES, sample=_tied)


def ref_count(sparsity, n):
  """round-half-up(sparsity * n), exactly, with ``sparsity`` the float32 value of the argument
  taken at the top of its rounding interval (s + ulp(s) / 2), so decimals tie upwards, while
  that interval scaled by n is narrower than 1/2; beyond, the float32 value itself."""
  s = float(np.float32(sparsity))
  if not s > 0:
    return 0
  s = min(s, 1.0)
  ulp = fractions.Fraction(2) ** (math.frexp(s)[1] - 24)
  top = fractions.Fraction(s) + (ulp / 2 if n * ulp / 2 < fractions.Fraction(1, 2) else 0)
  return min(math.floor(top * n + fractions.Fraction(1, 2)), n)


def ref_prune_lowest(leaves, k):
  """Keep-masks pruning the k lowest values: stable sort by value, then global position."""
  flat = [np.asarray(x, np.float32).ravel() + np.float32(0.0) for x in leaves]  # -0.0 -> 0.0
  values = np.concatenate(flat) if flat else np.zeros(0, np.float32)
  order = np.argsort(values, kind="stable")
  keep = np.ones(values.size, bool)
  keep[order[:k]] = False
  out, start = [], 0
  for x in leaves:
    out.append(keep[start:start + np.size(x)].reshape(np.shape(x)))
    start += np.size(x)
  return out


def ref_topk(tree, sparsity, scope="global"):
  """Numpy top-k masks of a tree; ``sparsity`` scalar or (local) a tree of per-leaf values."""
  paths, leaves = tree_utils.path_names(tree), jax.tree.leaves(tree)
  per_leaf = (jax.tree.leaves(sparsity) if isinstance(sparsity, dict)
              else [sparsity] * len(leaves))
  if scope == "global":
    names = [""] * len(leaves)
  elif scope == "local":
    names = paths
  else:
    names = [scope(p) for p in paths]
  masks = [None] * len(leaves)
  for name in dict.fromkeys(names):
    members = [i for i, n in enumerate(names) if n == name]
    total = sum(np.size(leaves[i]) for i in members)
    k = ref_count(per_leaf[members[0]], total)
    for i, m in zip(members, ref_prune_lowest([leaves[i] for i in members], k)):
      masks[i] = m
  return jax.tree.unflatten(jax.tree.structure(tree), masks)


def assert_masks_equal(got, want):
  chex.assert_trees_all_equal_structs(got, want)
  for path, g, w in zip(tree_utils.path_names(want), jax.tree.leaves(got), jax.tree.leaves(want)):
    g = np.asarray(g)
    assert g.dtype == np.bool_, path
    np.testing.assert_array_equal(np.broadcast_to(g, np.shape(w)), w, err_msg=path)


SPARSITIES = np.concatenate([
    [0.0, 1.0, 0.5, 0.25, 0.75, 1 / 3, 0.265, 0.145, 0.001, 0.999, 1 / N_TOTAL, 0.5 / N_TOTAL],
    np.random.default_rng(0).random(28)]).astype(np.float32)


def _by_layer(path):
  return path.split("/")[0]


# --- counts -----------------------------------------------------------------------------------


def test_num_to_prune_eager_and_traced():
  # Large totals too: a float32 product would be off by one (or exceed the total) there.
  totals = [0, 1, 7, 10, 100, 242, 1000, 4097, 2**23 + 1, 2**24 + 1, 10**8 + 1, 2**31 - 1]
  f32 = np.finfo(np.float32)
  sp = np.concatenate([SPARSITIES, np.arange(0, 1001) / 1000, 10.0 ** -np.arange(1, 40),
                       [f32.tiny, np.nextafter(np.float32(1), np.float32(0)),
                        np.nextafter(np.float32(0.5), np.float32(1))]]).astype(np.float32)
  for n in totals:
    traced = np.asarray(jax.jit(jax.vmap(lambda s, n=n: select.num_to_prune(s, n)))(sp))
    eager = np.array([select.num_to_prune(float(s), n) for s in sp])
    want = np.array([ref_count(s, n) for s in sp])
    np.testing.assert_array_equal(eager, want, err_msg=f"total={n}")
    np.testing.assert_array_equal(traced, want, err_msg=f"total={n}")
    assert want.max() <= n and want.min() >= 0
  assert select.num_to_prune(1.0, 2**31 - 1) == 2**31 - 1
  assert select.num_to_prune(0.5, 10**7) == 5 * 10**6
  assert select.num_to_prune(0.5, 10**8) == 5 * 10**7  # exact float32 value at large totals
  assert int(jax.jit(select.num_to_prune, static_argnums=1)(0.5, 10**8)) == 5 * 10**7
  assert select.num_to_prune(0.9, 10**8) == int(np.float64(np.float32(0.9)) * 10**8 + 0.5)
  with pytest.raises(ValueError):
    select.num_to_prune(0.5, 2**31)
  assert select.num_to_prune(0.5, 7) == 4  # half up
  assert select.num_to_prune(0.25, 2) == 1 and select.num_to_prune(0.25, 6) == 2  # 1.5 -> 2
  # float32(0.7) * 5 = 3.49999994 and float32(0.265) * 100 = 26.4999986: ties as written.
  assert select.num_to_prune(0.7, 5) == 4 and select.num_to_prune(0.265, 100) == 27
  assert select.num_to_prune(jnp.float32(0.7), 5) == 4
  assert int(jax.jit(select.num_to_prune, static_argnums=1)(0.265, 100)) == 27


def test_num_to_prune_rounds_decimals_as_written():
  """Independent reference: decimal arithmetic, round half up, for every 3-digit sparsity."""
  digits = np.arange(1001)
  for n in [1, 2, 3, 5, 6, 7, 8, 10, 25, 100, 242, 1000]:
    want = [int((decimal.Decimal(int(d)) / 1000 * n).quantize(
        decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP)) for d in digits]
    eager = [select.num_to_prune(d / 1000, n) for d in digits]
    traced = jax.jit(jax.vmap(lambda s, n=n: select.num_to_prune(s, n)))(
        jnp.asarray(digits / 1000, jnp.float32))
    assert eager == want, n
    np.testing.assert_array_equal(traced, want, err_msg=str(n))


# --- topk -------------------------------------------------------------------------------------


SCOPES = {"global": "global", "local": "local", "by_layer": _by_layer}
# One compiled function per scope, reused by every test: (scores, traced sparsity) -> masks.
JIT_TOPK = {name: jax.jit(functools.partial(select.topk, scope=scope))
            for name, scope in SCOPES.items()}


@pytest.mark.parametrize("scope_name", list(SCOPES))
@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_topk_exact_counts_and_masks_for_many_sparsities(scope_name, kind):
  """Traced sparsities (one compile) and eager calls both equal the numpy sort reference."""
  scope = SCOPES[scope_name]
  scores = tied_scores(1)
  if kind == "continuous":  # distinct values, about half negative
    scores = random_tree(3, jax.tree.map(np.shape, scores))
  for i, s in enumerate(SPARSITIES):
    got = JIT_TOPK[scope_name](scores, s)  # s: a float32 scalar, traced
    want = ref_topk(scores, float(s), scope)
    assert_masks_equal(got, want)
    if scope_name == "global":
      pruned = sum(int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(got))
      assert pruned == ref_count(s, N_TOTAL)
    if i in (0, 1, 2, 6, 7, 20):  # 0, 1, 0.5, 0.265, 0.145, a random one: eager == traced
      chex.assert_trees_all_equal(select.topk(scores, float(s), scope=scope), got)


def test_topk_traced_sparsity_matches_eager_at_rounding_edges():
  """Decimal sparsities whose product with N is x.5 as written (but not in float32) prune the
  same, half-up count eagerly and under jit."""
  scores = {"w": jnp.asarray(np.random.default_rng(4).permutation(100), jnp.float32)}
  sparsities = [0.145, 0.265, 0.285, 0.295, 0.525, 0.565, 0.575, 0.585, 0.005, 0.995]
  jitted = jax.jit(select.topk)
  for s in sparsities:
    eager = select.topk(scores, s)
    traced = jitted(scores, jnp.float32(s))
    chex.assert_trees_all_equal(eager, traced)
    assert int(np.sum(~np.asarray(eager["w"]))) == ref_count(s, 100) == math.floor(
        round(s * 1000) / 10 + 0.5)
    assert_masks_equal(eager, ref_topk(scores, s))


@pytest.mark.slow  # over ~10 s
def test_prune_lowest_ties_spanning_many_chunks():
  """Leaves of several 2^18-element chunks, ties on every value: the cutoff falls inside one
  chunk (ranked by cumsum) with whole chunks of ties before and after it (plain compares)."""
  rng = np.random.default_rng(7)
  leaves = [jnp.asarray(rng.integers(-4, 5, n), jnp.float32) for n in (3 * 2**18 + 123, 70_001)]
  total = sum(x.size for x in leaves)
  for k in (0, 1, total // 3, total // 2 + 17, total - 1, total):
    got = select.prune_lowest(leaves, k)
    assert_masks_equal(got, ref_prune_lowest(leaves, k))
    assert sum(int((~m).sum()) for m in got) == k
  equal = [jnp.zeros(2 * 2**18)]  # the cutoff exactly at the chunk boundary
  assert_masks_equal(select.prune_lowest(equal, 2**18), ref_prune_lowest(equal, 2**18))


def test_topk_ties_and_signed_zeros_by_hand():
  # Equal scores (0.0 == -0.0) are pruned in leaf order, then by flat index.
  scores = {"a": jnp.array([0.0, -0.0, 1.0]), "b": jnp.array([-0.0, 0.0, -1.0])}
  m = select.topk(scores, 4 / 6)
  assert m["a"].tolist() == [False, False, True]
  assert m["b"].tolist() == [False, True, False]


def test_topk_per_leaf_sparsity_tree():
  scores = tied_scores(5)
  sparsity = {"conv": {"kernel": 0.3}, "dense": {"bias": 0.0, "kernel": 0.9}}
  eager = select.topk(scores, sparsity, scope="local")
  assert_masks_equal(eager, ref_topk(scores, sparsity, "local"))
  traced = jax.jit(functools.partial(select.topk, scope="local"))(
      scores, jax.tree.map(jnp.float32, sparsity))
  chex.assert_trees_all_equal(eager, traced)
  assert int(np.sum(~np.asarray(eager["dense"]["kernel"]))) == 144
  with pytest.raises(ValueError, match="scope='local'"):
    select.topk(scores, sparsity, scope="global")
  with pytest.raises(ValueError, match="dense/bias"):
    select.topk(scores, {"conv": {"kernel": 0.3}, "dense": {"kernel": 0.9}}, scope="local")
  with pytest.raises(ValueError, match="sparsity of leaf 'dense/kernel'"):
    select.topk(scores, {"conv": {"kernel": 0.3}, "dense": {"bias": 0.0, "kernel": 1.2}},
                scope="local")


@pytest.mark.parametrize("sparsity", [-0.1, 1.01, 2.0, float("nan")])
def test_topk_rejects_sparsity_outside_unit_interval(sparsity):
  with pytest.raises(ValueError, match="sparsity must lie in"):
    select.topk(tied_scores(0), sparsity)
  with pytest.raises(ValueError, match="sparsity must lie in"):
    select.topk(tied_scores(0), jnp.float32(sparsity))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_topk_rejects_non_finite_scores_naming_the_leaf(bad):
  scores = tied_scores(0)
  scores["dense"]["kernel"] = scores["dense"]["kernel"].at[3, 4].set(bad)
  with pytest.raises(ValueError, match="dense/kernel") as info:
    select.topk(scores, 0.5)
  assert "conv/kernel" not in str(info.value)


def test_topk_empty_leaves_take_no_part_and_int_scores():
  scores = tied_scores(6)
  as_int = jax.tree.map(lambda x: x.astype(jnp.int32), scores)
  m = select.topk({**as_int, "empty": jnp.zeros((0,), jnp.float32)}, 0.4)
  assert m["empty"].shape == (0,) and m["empty"].dtype == jnp.bool_
  assert_masks_equal({k: v for k, v in m.items() if k != "empty"}, ref_topk(scores, 0.4))


def test_sortable_keys_preserve_order():
  f32 = np.finfo(np.float32)
  # (Subnormals are left out: XLA on CPU flushes them to zero before comparing.)
  special = np.array([-np.inf, -f32.max, -1.0, -f32.tiny, -0.0, 0.0, f32.tiny, 1.0, f32.max,
                      np.inf], np.float32)
  rng = np.random.default_rng(7)
  values = np.concatenate([special, (rng.standard_normal(500) * 10.0 ** rng.integers(
      -30, 30, 500)).astype(np.float32), rng.integers(-3, 3, 50).astype(np.float32)])
  assert np.all((values == 0) | (np.abs(values) >= f32.tiny))
  keys = np.asarray(select.sortable_keys(jnp.asarray(values)))
  assert keys.dtype == np.uint32
  jitted = np.asarray(jax.jit(select.sortable_keys)(jnp.asarray(values)))
  np.testing.assert_array_equal(keys, jitted)
  a, b = values[:, None], values[None, :]
  ka, kb = keys[:, None], keys[None, :]
  np.testing.assert_array_equal(ka < kb, a < b)
  np.testing.assert_array_equal(ka == kb, a == b)  # -0.0 == 0.0


def test_threshold():
  scores = tied_scores(8)
  for value in (-1.0, 0.0, 2.5):
    want = jax.tree.map(lambda x, v=value: np.asarray(x) > v, scores)
    assert_masks_equal(select.threshold(scores, value), want)
    assert_masks_equal(jax.jit(select.threshold)(scores, jnp.float32(value)), want)
  scores["conv"]["kernel"] = scores["conv"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="conv/kernel"):
    select.threshold(scores, 0.0)


# --- N:M --------------------------------------------------------------------------------------


def ref_n_of_m(x, n, m, axis):
  """Keep the n largest of every m consecutive along ``axis``; ties: earlier index pruned."""
  moved = np.moveaxis(np.asarray(x, np.float32) + np.float32(0.0), axis, -1)
  keep = np.zeros(moved.shape, bool)
  for idx in np.ndindex(*moved.shape[:-1]):
    row = keep[idx]
    for start in range(0, moved.shape[-1], m):
      order = np.argsort(moved[idx][start:start + m], kind="stable")
      row[start + order[m - n:]] = True
  return np.moveaxis(keep, -1, axis)


@pytest.mark.parametrize("shape,n,m,axis", [
    ((16, 10), 2, 4, 0), ((16, 10), 1, 4, 0), ((16, 10), 3, 8, 0), ((16, 10), 4, 4, 0),
    ((16, 10), 1, 16, 0), ((16, 10), 3, 5, 1), ((16, 10), 1, 2, -1), ((3, 3, 1, 8), 2, 4, -1),
    ((3, 3, 1, 8), 1, 3, 0), ((64, 3), 5, 32, 0), ((96, 2), 31, 32, 0),  # m > 16: by threshold
    ((2, 64, 3), 5, 32, 1), ((3, 64), 7, 32, -1),
])
def test_n_of_m_matches_loop_reference(shape, n, m, axis):
  rng = np.random.default_rng(9)
  x = rng.integers(-2, 3, shape).astype(np.float32)  # many ties within groups
  x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
  scores = {"layer": {"kernel": jnp.asarray(x)}}
  eager = select.n_of_m(scores, n, m, axis)
  jitted = jax.jit(functools.partial(select.n_of_m, n=n, m=m, axis=axis))(scores)
  chex.assert_trees_all_equal(eager, jitted)
  got = np.asarray(eager["layer"]["kernel"])
  np.testing.assert_array_equal(got, ref_n_of_m(x, n, m, axis))
  moved = np.moveaxis(got, axis, -1)
  counts = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m)).sum(-1)
  assert np.all(counts == n)


def test_n_of_m_by_hand():
  col = lambda v: jnp.array(v, jnp.float32)[:, None]  # noqa: E731
  assert select.n_of_m_leaf(col([1.0, 4.0, 3.0, 2.0]), 2, 4)[:, 0].tolist() == [
      False, True, True, False]
  assert select.n_of_m_leaf(col([5.0, 5.0, 5.0, 5.0]), 2, 4)[:, 0].tolist() == [
      False, False, True, True]
  assert select.n_of_m_leaf(col([0.0, -0.0, 1.0, 2.0]), 3, 4)[:, 0].tolist() == [
      False, True, True, True]


def test_n_of_m_errors_name_the_leaf():
  scores = {"ok": jnp.ones((8, 3)), "dense": {"kernel": jnp.ones((6, 4))}}
  with pytest.raises(ValueError, match="dense/kernel"):
    select.n_of_m(scores, 2, 4)
  with pytest.raises(ValueError, match="0 < n <= m"):
    select.n_of_m({"ok": jnp.ones((8, 3))}, 5, 4)
  with pytest.raises(ValueError, match="'ok'"):
    select.n_of_m({"ok": jnp.full((8, 3), jnp.nan)}, 2, 4)


# --- allocation -------------------------------------------------------------------------------


def rigl_erk(shapes, sparsity, power=1.0):
  """Per-layer sparsities by RigL's ERK loop (Evci et al. 2020, sparse_utils.py), in numpy."""
  dense = set()
  while True:
    divisor, rhs, raw = 0.0, 0.0, {}
    for name, shape in shapes.items():
      n = np.prod(shape)
      if name in dense:
        rhs -= n * sparsity
      else:
        rhs += n * (1 - sparsity)
        raw[name] = (np.sum(shape) / np.prod(shape)) ** power
        divisor += raw[name] * n
    eps = rhs / divisor
    max_prob = max(raw.values())
    if max_prob * eps > 1:
      dense.update(name for name, p in raw.items() if p == max_prob)
    else:
      break
  return {name: 0.0 if name in dense else 1.0 - eps * raw[name] for name in shapes}


def _alloc_case(rules):
  params = random_tree(0, {"big": {"kernel": (64, 64)},  # keys sorted: the order of the draws
                           "conv": {"bias": (8,), "kernel": (3, 3, 1, 8)},
                           "dense1": {"bias": (16,), "kernel": (32, 16)},
                           "dense2": {"bias": (10,), "kernel": (16, 10)}})
  the_plan = groups.plan(params, rules)
  paths = tree_utils.path_names(params)
  prunable = {p: np.shape(x) for p, x, g in zip(paths, jax.tree.leaves(params),
                                                  jax.tree.leaves(the_plan))
              if g.kind != "dense"}
  return params, the_plan, paths, prunable


def _mean_density(alloc, paths, prunable):
  flat = dict(zip(paths, jax.tree.leaves(alloc)))
  sizes = {p: np.prod(s) for p, s in prunable.items()}
  return sum(sizes[p] * (1 - flat[p]) for p in prunable) / sum(sizes.values())


def test_uniform_allocation():
  params, the_plan, paths, prunable = _alloc_case(None)
  alloc = dict(zip(paths, jax.tree.leaves(select.uniform(params, the_plan, 0.7))))
  assert alloc == {p: (0.7 if p in prunable else 0.0) for p in paths}
  assert set(prunable) == {"big/kernel", "conv/kernel", "dense1/kernel", "dense2/kernel"}
  with pytest.raises(ValueError, match="sparsity"):
    select.uniform(params, the_plan, 1.5)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_erk_matches_rigl(sparsity, power):
  params, the_plan, paths, prunable = _alloc_case(None)
  alloc = select.erk(params, the_plan, sparsity, power=power)
  flat = dict(zip(paths, jax.tree.leaves(alloc)))
  ref = rigl_erk(prunable, sparsity, power)
  saturates = min(ref.values()) == 0.0
  assert saturates == (sparsity == 0.5)  # only the smallest budget makes a kernel dense
  for p in paths:
    if p in prunable:
      np.testing.assert_allclose(flat[p], ref[p], atol=1e-9, err_msg=p)
    else:
      assert flat[p] == 0.0
  assert abs(_mean_density(alloc, paths, prunable) - (1 - sparsity)) < 1e-6
  # Fewer parameters per fan-in/out (bigger layers) -> sparser.
  assert flat["big/kernel"] > flat["dense1/kernel"] >= flat["conv/kernel"]
  if not saturates:
    assert flat["dense1/kernel"] > flat["dense2/kernel"] > flat["conv/kernel"] > 0.0


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_erk_saturated_leaves_are_dense(sparsity):
  params, the_plan, paths, prunable = _alloc_case([(".*", groups.element())])  # biases too
  alloc = select.erk(params, the_plan, sparsity)
  flat = dict(zip(paths, jax.tree.leaves(alloc)))
  ref = rigl_erk(prunable, sparsity)
  saturated = [p for p, s in ref.items() if s == 0.0]
  assert "dense2/bias" in saturated and "conv/bias" in saturated  # raw density 1 per bias
  for p in paths:
    np.testing.assert_allclose(flat[p], ref[p], atol=1e-9, err_msg=p)
  for p in saturated:
    assert flat[p] == 0.0
  assert abs(_mean_density(alloc, paths, prunable) - (1 - sparsity)) < 1e-6
  assert all(0.0 <= s <= 1.0 for s in flat.values())


def test_erk_rejects_bad_sparsity():
  params, the_plan, _, _ = _alloc_case(None)
  with pytest.raises(ValueError, match="sparsity"):
    select.erk(params, the_plan, -0.2)


# --- masks ------------------------------------------------------------------------------------


def _np_unit_scores(imp, the_plan, how):
  """Per-unit numpy scores (flat) of every leaf, following the plan (for neurons only)."""
  fns = {"sum": np.sum, "mean": np.mean, "max": np.max,
         "l2": lambda v, axis: np.sqrt(np.sum(v**2, axis=axis))}

  def leaf(x, g):
    x = np.asarray(x, np.float64)
    if g.kind == "dense":
      return np.zeros(0)
    assert g.kind == "neurons"
    ax = g.axis % x.ndim
    return fns[how](x, axis=tuple(i for i in range(x.ndim) if i != ax))
  return jax.tree.map(leaf, imp, the_plan)


def _np_normalize(s, how):
  if s.size == 0 or how == "none":
    return s
  if how == "l2":
    return s / np.linalg.norm(s)
  if how == "max":
    return s / s.max()
  order = np.argsort(s, kind="stable")  # lamp
  out = np.zeros_like(s)
  for pos, u in enumerate(order):
    out[u] = s[u] ** 2 / (s[order[pos:]] ** 2).sum()
  return out


def test_masks_element_default_plan(params):
  imp = jax.tree.map(jnp.abs, params)
  the_plan = groups.plan(params)
  kernels = {k: {"kernel": v["kernel"]} for k, v in imp.items()}
  exact = select.selector(floor=0.0)  # no floor: exactly the budget, every leaf may empty
  for s in (0.0, 0.6, 1.0):
    got = select.masks(imp, the_plan, s, exact)
    want = ref_topk(kernels, s)
    for layer in imp:
      np.testing.assert_array_equal(got[layer]["kernel"], want[layer]["kernel"])
      assert got[layer]["bias"].shape == () and bool(got[layer]["bias"])
  traced = jax.jit(lambda imp, s: select.masks(imp, the_plan, s))(imp, jnp.float32(0.6))
  chex.assert_trees_all_equal(traced, select.masks(imp, the_plan, 0.6))


@pytest.mark.parametrize("granularity", [groups.element(), groups.neurons(-1)])
@pytest.mark.parametrize("floor", [0.01, 0.2])
def test_the_floor_keeps_the_best_groups_of_a_leaf_a_global_budget_would_empty(
    params, granularity, floor):
  imp = jax.tree.map(jnp.abs, params)
  imp["dense1"]["kernel"] = imp["dense1"]["kernel"] * 1e-3  # the global budget takes it first
  the_plan = groups.plan(params, [("kernel", granularity)])
  units = ({k: {"kernel": np.asarray(v["kernel"], np.float64)} for k, v in imp.items()}
           if granularity.kind == "element" else _np_unit_scores(imp, the_plan, "sum"))
  jitted = jax.jit(lambda imp, s: select.masks(imp, the_plan, s, select.selector(floor=floor)))
  for s in (0.5, 0.9, 1.0):
    got = jitted(imp, jnp.float32(s))
    want = ref_topk({k: {"kernel": v["kernel"]} for k, v in units.items()}, s)
    floored = 0
    for layer in params:
      u = units[layer]["kernel"]
      least = max(1, int(np.ceil(floor * u.size)))
      keep = want[layer]["kernel"]
      if keep.sum() < least:  # the leaf's own best `least` groups instead
        floored += 1
        keep = ref_topk({"x": u}, (u.size - least) / u.size)["x"]
      full = np.broadcast_to(np.asarray(got[layer]["kernel"]), params[layer]["kernel"].shape)
      unit_mask = full if granularity.kind == "element" else full.reshape(-1, u.size)[0]
      np.testing.assert_array_equal(unit_mask, keep, err_msg=f"{layer} at {s}")
    assert floored >= (1 if s >= 0.9 else 0)
  # Eager gives the jitted masks (at the sparsity where the floor binds).
  chex.assert_trees_all_equal(select.masks(imp, the_plan, 0.9, select.selector(floor=floor)),
                              jitted(imp, jnp.float32(0.9)))


@pytest.mark.parametrize("how,normalizer", [("sum", "none"), ("l2", "lamp"), ("mean", "max"),
                                            ("max", "l2")])
def test_masks_neurons_prune_whole_units(params, how, normalizer):
  imp = jax.tree.map(jnp.abs, params)
  the_plan = groups.plan(params, [("kernel", groups.neurons(-1))])
  s = 0.45
  got = select.masks(imp, the_plan, s, select.selector(reduce=how, normalizer=normalizer,
                                                       floor=0.0))
  units = jax.tree.map(lambda u: _np_normalize(u, normalizer),
                       _np_unit_scores(imp, the_plan, how))
  want_units = ref_topk({k: {"kernel": v["kernel"]} for k, v in units.items()}, s)
  total_units = 8 + 16 + 10
  pruned_units = 0
  for layer in params:
    k = np.broadcast_to(np.asarray(got[layer]["kernel"]), params[layer]["kernel"].shape)
    cols = k.reshape(-1, k.shape[-1])
    assert np.all(cols.all(axis=0) | ~cols.any(axis=0))  # each unit all kept or all pruned
    np.testing.assert_array_equal(cols[0], want_units[layer]["kernel"])
    pruned_units += int(np.sum(~cols[0]))
    assert got[layer]["bias"].shape == () and bool(got[layer]["bias"])
  assert pruned_units == ref_count(s, total_units)
  if how != "sum":  # eager == jit checked for one configuration (each costs a compile)
    return
  jitted = jax.jit(lambda imp, s: select.masks(
      imp, the_plan, s, select.selector(reduce=how, normalizer=normalizer, floor=0.0)))(
          imp, jnp.float32(s))
  chex.assert_trees_all_equal(jitted, got)


def test_masks_n_of_m_leaves_and_local_scope(params):
  imp = jax.tree.map(jnp.abs, params)
  the_plan = groups.plan(params, [("dense2/kernel", groups.n_of_m(2, 4)),
                                  ("kernel", groups.element())])
  got = select.masks(imp, the_plan, 0.6)
  np.testing.assert_array_equal(got["dense2"]["kernel"],
                                ref_n_of_m(imp["dense2"]["kernel"], 2, 4, 0))
  rest = {"conv": {"kernel": imp["conv"]["kernel"]}, "dense1": {"kernel": imp["dense1"]["kernel"]}}
  want = ref_topk(rest, 0.6)  # the N:M leaf is not part of the global budget
  for layer in rest:
    np.testing.assert_array_equal(got[layer]["kernel"], want[layer]["kernel"])
  local = select.masks(imp, the_plan, 0.6, select.selector("local"))
  want_local = ref_topk(rest, 0.6, "local")
  for layer in rest:
    np.testing.assert_array_equal(local[layer]["kernel"], want_local[layer]["kernel"])
  for layer in params:
    assert local[layer]["bias"].shape == () and bool(local[layer]["bias"])


@pytest.mark.parametrize("granularity", [groups.element(), groups.neurons(-1)])
def test_masks_previous_keeps_pruned_units_pruned(params, granularity):
  the_plan = groups.plan(params, [("kernel", granularity)])
  first = jax.tree.map(jnp.abs, params)
  second = jax.tree.map(jnp.abs, random_tree(42))  # a different ranking
  # "mean": unit sums would rank units by fan-in alone, the same in both rounds.
  prev = select.masks(first, the_plan, 0.5, select.selector(reduce="mean"))
  fresh = select.masks(second, the_plan, 0.7, select.selector(reduce="mean"))
  kept = select.masks(second, the_plan, 0.7, select.selector(reduce="mean"), previous=prev)

  def pruned(masks):
    return {layer: ~np.broadcast_to(np.asarray(masks[layer]["kernel"]),
                                    params[layer]["kernel"].shape) for layer in params}
  p_prev, p_fresh, p_kept = pruned(prev), pruned(fresh), pruned(kept)
  # Without `previous` some earlier-pruned weight would come back, so the test can fail.
  assert any(np.any(p_prev[k] & ~p_fresh[k]) for k in params)
  for layer in params:
    assert not np.any(p_prev[layer] & ~p_kept[layer]), layer
  n_prev = sum(int(v.sum()) for v in p_prev.values())
  n_kept = sum(int(v.sum()) for v in p_kept.values())
  assert n_kept > n_prev
  if granularity.kind == "neurons":
    units = sum(int(np.sum(v.reshape(-1, v.shape[-1])[0])) for v in p_kept.values())
    assert units == ref_count(0.7, 8 + 16 + 10)
  else:
    assert n_kept == ref_count(0.7, 72 + 512 + 160)
    # The rest is the top-k of the new scores among the survivors.
    masked = {k: {"kernel": np.where(p_prev[k], -np.inf, np.asarray(second[k]["kernel"]))}
              for k in params}
    want = ref_topk(masked, 0.7)
    for layer in params:
      np.testing.assert_array_equal(~p_kept[layer], want[layer]["kernel"])


def test_masks_errors_name_the_leaf(params):
  imp = jax.tree.map(jnp.abs, params)
  the_plan = groups.plan(params)
  bad = {**imp, "dense1": {**imp["dense1"], "kernel": imp["dense1"]["kernel"].at[0, 0].set(
      jnp.nan)}}
  with pytest.raises(ValueError, match="dense1/kernel"):
    select.masks(bad, the_plan, 0.5)
  missing = {k: v for k, v in imp.items() if k != "dense2"}
  with pytest.raises(ValueError, match="dense2/bias"):
    select.masks(missing, the_plan, 0.5)
  with pytest.raises(ValueError, match="sparsity"):
    select.masks(imp, the_plan, 1.5)


# ---------------------------------------------------------------- stacked (per-layer) leaves
def _stacked_scores():
  """(layers, in, out) scores whose layer 0 is far below the rest: a global budget empties it."""
  rng = np.random.default_rng(3)
  x = rng.random((3, 8, 4)).astype(np.float32)
  x[0] *= 1e-3
  return {"w": jnp.asarray(x), "b": jnp.asarray(rng.random(5), jnp.float32)}


@pytest.mark.parametrize("jit", [False, True])
def test_a_stacked_leaf_gets_a_budget_per_layer_under_a_local_scope(jit):
  scores = _stacked_scores()
  the_plan = groups.plan(scores, [("w", groups.per_layer(groups.element(), 0)),
                                  ("b", groups.element())])
  sel = select.selector("local", floor=0.0)
  fn = functools.partial(select.masks, the_plan=the_plan, sparsity=0.75, selector=sel)
  masks = (jax.jit(fn) if jit else fn)(scores)
  w = np.asarray(scores["w"])
  for i in range(3):  # by hand: each layer keeps its own 8 largest of 32
    want = w[i] >= np.sort(w[i].ravel())[-8]
    np.testing.assert_array_equal(np.asarray(masks["w"])[i], want)
  assert int(np.sum(masks["b"])) == 1  # round(0.75 * 5) = 4 pruned


def test_the_floor_holds_in_every_layer_of_a_stacked_leaf():
  scores = _stacked_scores()
  the_plan = groups.plan(scores, [("w", groups.per_layer(groups.neurons(-1), 0))])
  masks = select.masks(scores, the_plan, 0.5, select.selector(floor=0.25))
  kept = np.broadcast_to(np.asarray(masks["w"]), (3, 8, 4))[:, 0, :]  # (layers, units)
  # 12 units, 6 pruned globally: layer 0's 4 units are the lowest, so all 4 go, then 2 more; the
  # per-layer floor ceil(0.25 * 4) = 1 keeps layer 0's best unit instead.
  unit = np.asarray(scores["w"]).sum(1)
  assert kept[0].sum() == 1 and kept[0, np.argmax(unit[0])]
  whole = groups.plan(scores, [("w", groups.neurons(-1))])  # one leaf: the floor is over 4 units
  kept_whole = np.broadcast_to(select.masks(scores, whole, 0.5, select.selector(floor=0.25))["w"],
                               (3, 8, 4))
  assert kept_whole.sum() == 2 * 3 * 8  # 2 of its 4 units, in every layer alike


def test_stacked_leaves_are_normalized_per_layer():
  scores = _stacked_scores()
  the_plan = groups.plan(scores, [("w", groups.per_layer(groups.element(), 0))])
  masks = select.masks(scores, the_plan, 0.5, select.selector(normalizer="max", floor=0.0))
  w = np.asarray(scores["w"])
  normalized = w / w.max(axis=(1, 2), keepdims=True)  # by hand, per layer
  want = normalized >= np.sort(normalized.ravel())[48]
  np.testing.assert_array_equal(np.asarray(masks["w"]), want)
  assert np.asarray(masks["w"])[0].sum() > 0  # layer 0 competes after its own normalization


def test_erk_scores_a_stacked_leaf_by_the_shape_of_one_layer():
  stacked = {"a": jnp.ones((3, 64, 32)), "b": jnp.ones((32, 8))}
  separate = {"a0": jnp.ones((64, 32)), "a1": jnp.ones((64, 32)), "a2": jnp.ones((64, 32)),
              "b": jnp.ones((32, 8))}
  plan_stacked = {"a": groups.per_layer(groups.element(), 0), "b": groups.element()}
  plan_separate = jax.tree.map(lambda _: groups.element(), separate)
  got = select.erk(stacked, plan_stacked, 0.8)
  want = select.erk(separate, plan_separate, 0.8)
  assert got["a"] == pytest.approx(want["a0"]) and got["b"] == pytest.approx(want["b"])

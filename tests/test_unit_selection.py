"""Unit selection over discovered groups: scores equal a hand-written reduction, kept counts
per layer and per global budget equal a numpy reference, floors and width multiples hold, and
no default global selection empties a layer of any zoo member."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import structure
from impjax.models import zoo
from tests.helpers import eager_and_jit
from tests.helpers import zoo_model


def _mlp():
  """Two hidden layers of 8 and 6 units; the second scaled down 100x."""
  rng = np.random.default_rng(0)
  params = {"w1": rng.standard_normal((5, 8)), "b1": rng.standard_normal(8),
            "w2": rng.standard_normal((8, 6)) * 0.01, "w3": rng.standard_normal((6, 3))}
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  fn = lambda p, x: jnp.tanh(jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]) @ p["w3"]
  return fn, params, jnp.ones((2, 5))


def _reference_scores(p):
  """Sum of |w| over each unit's entries in every member, by hand."""
  a = {k: np.abs(np.asarray(v, np.float64)) for k, v in p.items()}
  return {"hidden:w1": a["w1"].sum(0) + a["b1"] + a["w2"].sum(1),
          "hidden:w2": a["w2"].sum(0) + a["w3"].sum(1)}


def test_group_scores_equal_the_hand_written_reduction_eager_and_jit():
  fn, params, x = _mlp()
  s = structure.discover(fn, params, x)
  importance = jax.tree.map(jnp.abs, params)
  got = eager_and_jit(lambda imp: structure.group_scores(s, imp), importance)
  for name, want in _reference_scores(params).items():
    np.testing.assert_allclose(got[name], want, rtol=1e-6)


def _top(scores, k):
  keep = np.zeros(scores.shape, bool)
  keep[np.argsort(-scores, kind="stable")[:k]] = True
  return keep


def test_layer_scope_keeps_the_top_units_of_every_layer():
  fn, params, x = _mlp()
  s = structure.discover(fn, params, x)
  keep = structure.keep_units(s, jax.tree.map(jnp.abs, params), 0.5)
  ref = _reference_scores(params)
  assert {n: k.tolist() for n, k in keep.items()} == {
      "hidden:w1": _top(ref["hidden:w1"], 4).tolist(),
      "hidden:w2": _top(ref["hidden:w2"], 3).tolist()}
  rounded = structure.keep_units(s, jax.tree.map(jnp.abs, params), 0.7, multiple_of=4)
  # 8 - round(5.6) = 2 -> 4; 6 - round(4.2) = 2 -> 4.
  assert [int(k.sum()) for k in rounded.values()] == [4, 4]
  np.testing.assert_array_equal(rounded["hidden:w1"], _top(ref["hidden:w1"], 4))


def _global_reference(scores, fraction, floor):
  """A loop: remove the lowest mean-normalized unit of any layer still above the floor."""
  norm = {n: v / v.mean() for n, v in scores.items()}
  alive = {n: np.ones(v.shape, bool) for n, v in scores.items()}
  total = sum(v.size for v in scores.values())
  for _ in range(int(np.floor(fraction * total + 0.5))):
    best = None
    for n, v in norm.items():
      if alive[n].sum() <= floor:
        continue
      for j in np.flatnonzero(alive[n]):
        if best is None or v[j] < best[0] or (v[j] == best[0] and j > best[2]):
          best = (v[j], n, j)
    if best is None:
      break
    alive[best[1]][best[2]] = False
  return alive


@pytest.mark.parametrize("fraction,floor", [(0.5, 1), (0.9, 1), (0.9, 2), (1.0, 0)])
def test_global_scope_matches_the_reference_loop_with_floors(fraction, floor):
  fn, params, x = _mlp()
  s = structure.discover(fn, params, x)
  keep = structure.keep_units(s, jax.tree.map(jnp.abs, params), fraction, scope="global",
                              min_units=floor)
  want = _global_reference(_reference_scores(params), fraction, floor)
  assert {n: k.tolist() for n, k in keep.items()} == {n: w.tolist() for n, w in want.items()}
  assert all(k.sum() >= floor for k in keep.values())


class _Scanned(nn.Module):
  @nn.compact
  def __call__(self, x):
    body = lambda mdl, x, _: (x + nn.Dense(4)(nn.relu(nn.Dense(6)(x))), None)
    x, _ = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=3)(self, x, None)
    return x


def test_a_stacked_group_gets_a_budget_per_layer():
  model = _Scanned()
  x = jnp.ones((2, 4))
  params = model.init(jax.random.key(0), x)["params"]
  fn = lambda p, x: model.apply({"params": p}, x)
  s = structure.discover(fn, params, x)
  importance = jax.tree.map(jnp.abs, params)
  (name,) = s.prunable()
  scores = np.asarray(structure.group_scores(s, importance)[name])
  assert scores.shape == (3, 6)
  keep = structure.keep_units(s, importance, 0.5)[name]
  np.testing.assert_array_equal(keep, np.stack([_top(r, 3) for r in scores]))
  keep = structure.keep_units(s, importance, 0.99, scope="global")[name]
  assert keep.shape == (3, 6) and (keep.sum(1) == 1).all()


def test_bad_options_fail_naming_them():
  fn, params, x = _mlp()
  s = structure.discover(fn, params, x)
  with pytest.raises(ValueError, match="scope"):
    structure.keep_units(s, params, 0.5, scope="per_leaf")
  with pytest.raises(ValueError, match="multiple_of"):
    structure.keep_units(s, params, 0.5, multiple_of=0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    structure.keep_units(s, params, 1.5)
  with pytest.raises(ValueError, match="no exact groups of kinds.*heads"):
    structure.keep_units(s, params, 0.5, "heads")


@pytest.mark.parametrize("name", zoo.NAMES)
def test_a_default_global_selection_empties_no_layer_of_any_zoo_member(name):
  member, s = zoo_model(name)
  keep = structure.keep_units(s, jax.tree.map(jnp.abs, member.params), 0.95, scope="global")
  assert keep and all((k.reshape(-1, k.shape[-1]).sum(-1) >= 1).all() for k in keep.values())
  for kind in {s.groups[n].kind for n in keep}:  # one budget per kind, cut only by the floors
    rows = [k.reshape(-1, k.shape[-1]) for n, k in keep.items() if s.groups[n].kind == kind]
    total, layers = sum(r.size for r in rows), sum(r.shape[0] for r in rows)
    removed = min(int(np.floor(0.95 * total + 0.5)), total - layers)
    assert sum(int(r.sum()) for r in rows) == total - removed, kind

"""Tests for impjax.select.layer_importance: per-layer scores spread over units against a loop,
eager and jitted; Layer-Wise Quantization by block influence against a numpy reference; errors
naming leaves and layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import scores
from impjax import select
from tests.helpers import eager_and_jit, random_tree

LAYERS = ("0", "1", "2", "10")  # "layers/1" must not claim "layers/10/..."


def make_params():
  tree = random_tree(0, {"embed": {"embedding": (10, 4)},
                         "layers": {name: {"query": {"kernel": (4, 4)}, "mlp": {"kernel": (4, 6)}}
                                    for name in LAYERS}})
  for name in LAYERS:
    tree["layers"][name]["query"]["bias"] = jnp.zeros(4, jnp.float32)
  return tree


PARAMS = make_params()
PLAN = groups.plan(PARAMS, [(r"query/kernel$", groups.leaf()),
                            (r"mlp/kernel$", groups.neurons(-1))])
SCORES = {f"layers/{name}": s for name, s in zip(LAYERS, (0.3, 0.1, 0.7, 0.2))}


def reference_importance(layer_scores):
  """Loop reference: each planned leaf's units repeat its layer's score."""
  out = {"embed": {"embedding": np.zeros(0)}, "layers": {}}
  for name in LAYERS:
    s = float(layer_scores[f"layers/{name}"])
    out["layers"][name] = {"query": {"kernel": np.array([s]), "bias": np.zeros(0)},
                           "mlp": {"kernel": np.array([s] * 6)}}
  return out


def test_layer_importance_matches_loop_eager_and_jitted():
  eager = select.layer_importance(SCORES, PARAMS, PLAN)
  jitted = jax.jit(lambda s: select.layer_importance(s, PARAMS, PLAN))(
      {k: jnp.float32(v) for k, v in SCORES.items()})
  want = reference_importance(SCORES)
  for got in (eager, jitted):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == jnp.float32
      np.testing.assert_array_equal(np.asarray(g), w.astype(np.float32))


def test_block_influence_lowering_matches_numpy_reference():
  rng = np.random.default_rng(1)
  mask = np.ones((3, 5), np.float32)
  mask[1, 3:] = 0  # padding tokens must not count
  h = rng.standard_normal((len(LAYERS) + 1, 3, 5, 4)).astype(np.float32)
  h[1:] = h[:-1] + np.array([0.3, 1.5, 0.1, 0.8])[:, None, None, None] * h[1:]
  influence, want_bi = {}, {}
  for i, name in enumerate(LAYERS):
    sums = scores.block_influence_sums(jnp.asarray(h[i]), jnp.asarray(h[i + 1]), jnp.asarray(mask))
    influence[f"layers/{name}"] = scores.means(sums)["influence"]
    terms = [1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
             for a, b, m in zip(h[i].reshape(-1, 4), h[i + 1].reshape(-1, 4), mask.ravel()) if m]
    want_bi[name] = np.mean(terms)
    np.testing.assert_allclose(float(influence[f"layers/{name}"]), want_bi[name], rtol=1e-5)
  # Every layer holds 16 + 24 weights: at 3 bits between 2 and 4 the two least influential
  # layers drop to 2 bits, the others keep 4.
  lowered = sorted(LAYERS, key=want_bi.get)[:2]
  bits_of = lambda s: select.order_bits(select.layer_importance(s, PARAMS, PLAN), PARAMS, PLAN,
                                        2, 4, 3.0)
  bits = eager_and_jit(bits_of, influence)
  for name in LAYERS:
    want = 2 if name in lowered else 4
    layer = bits["layers"][name]
    assert int(layer["query"]["kernel"]) == want
    np.testing.assert_array_equal(np.asarray(layer["mlp"]["kernel"]), np.full((1, 6), want))
    assert layer["query"]["bias"] is None
  assert select.average_bits(bits, PARAMS) == 3.0


def test_layer_importance_errors_name_leaves_and_layers():
  with pytest.raises(ValueError, match=r"Leaf 'layers/10/mlp/kernel' belongs to 0 layers"):
    select.layer_importance({k: v for k, v in SCORES.items() if k != "layers/10"}, PARAMS, PLAN)
  with pytest.raises(ValueError, match=r"Leaf 'layers/0/mlp/kernel' belongs to 2 layers"):
    select.layer_importance({**SCORES, "layers": 1.0}, PARAMS, PLAN)
  with pytest.raises(ValueError, match=r"no planned leaf: \['embed'\]"):
    select.layer_importance({**SCORES, "embed": 1.0}, PARAMS, PLAN)
  with pytest.raises(ValueError, match=r"layer_scores\['layers/0'\] must be a scalar"):
    select.layer_importance({**SCORES, "layers/0": jnp.ones(2)}, PARAMS, PLAN)

"""AMP's entropy-Taylor importance over discovered groups, on any model: against gates written
by hand on a small MLP, against MiniLM's own hand-placed gates, and on every zoo member (a zero
gate removes exactly its unit)."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import pruning
from impjax import scores
from impjax import structure
from impjax import tree_utils
from impjax.models import zoo
from impjax.structure import unit_taylor
from tests.helpers import zoo_model


def test_equals_per_example_activation_gates_written_by_hand():
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32),
            "b1": jnp.asarray(rng.standard_normal(5), jnp.float32),
            "w2": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
  fn = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
  batches = [(jnp.asarray(rng.standard_normal((6, 3)), jnp.float32),) for _ in range(2)]
  s = structure.discover(fn, params, batches[0][0])
  (name,) = s.prunable()
  got = structure.entropy_taylor_scores(fn, params, s, batches, progress=False)[name]

  def by_hand(x):  # AMP: a (batch, units) gate on the hidden activation, |dL/dg| over examples
    loss = lambda g: scores.entropy_loss(
        (jnp.tanh(x @ params["w1"] + params["b1"]) * g) @ params["w2"])
    return np.abs(np.asarray(jax.grad(loss)(jnp.ones((6, 5))))).mean(0)
  want = np.mean([by_hand(x) for (x,) in batches], axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind, group_kind", [("mlp", "hidden"), ("heads", "heads")])
def test_equals_minilms_own_gates(kind, group_kind):
  member, s = zoo_model("minilm")
  graphdef, _ = nnx.split(member.model)
  ids, mask = member.inputs
  fn = lambda p, ids, mask: nnx.merge(graphdef, p).encode(ids, mask)
  batches = [(ids, mask), (ids[::-1], mask[::-1])]
  got = structure.entropy_taylor_scores(fn, member.params, s, batches, group_kind,
                                        progress=False)
  want = pruning.entropy_taylor_scores(member.model, [{"ids": i, "mask": m} for i, m in batches],
                                       kind, progress=False)
  by_layer = {}
  for name, value in got.items():
    (layer,) = {m.path.split("/")[1] for m in groups.members(s.groups[name].coupled)}
    by_layer[f"layers/{layer}/{kind}"] = value
  assert sorted(by_layer) == sorted(want)
  for key, value in want.items():
    np.testing.assert_allclose(by_layer[key], value, rtol=2e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_a_zero_gate_removes_exactly_its_unit_on_every_zoo_model(name):
  member, s = zoo_model(name)
  params = member.params
  leaves = tree_utils.leaves_by_path(params)
  apply = jax.jit(member.apply)
  for group, coupled in s.prunable().items():
    shape = groups.keep_shape(leaves, coupled)
    keep = np.ones(shape, bool)
    keep[..., 1] = False  # unit 1 (of every layer, when stacked)
    gates = {group: jnp.asarray(keep, jnp.float32)}
    gated = unit_taylor.gated(s, params, gates)
    masks = groups.coupled_masks(params, {group: coupled}, {group: jnp.asarray(keep)})
    masked = jax.tree_util.tree_map_with_path(
        lambda path, v, m: v if "batch_stats" in tree_utils.path_str(path) else jnp.where(m, v, 0),
        params, masks)
    np.testing.assert_allclose(apply(gated, *member.inputs), apply(masked, *member.inputs),
                               atol=1e-5, err_msg=group)
  batch = member.inputs[0].shape[0]
  fn = lambda p, *xs: member.apply(p, *xs).reshape(xs[0].shape[0], -1)
  got = structure.entropy_taylor_scores(fn, params, s, [member.inputs], progress=False)
  assert sorted(got) == sorted(s.prunable()) and batch > 1
  for group, value in got.items():
    assert value.shape == groups.keep_shape(leaves, s.prunable()[group])
    assert np.isfinite(np.asarray(value)).all() and (np.asarray(value) > 0).any(), group

"""Ordered widths over discovered groups: ranks equal a numpy argsort, every zoo member at a
width keeps ceil(width * units) units of each group and layer with all their coupled entries,
the compacted model at that width equals the masked one, and ordered dropout trains through it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import slicing
from impjax import structure
from impjax import transforms
from impjax import tree_utils
from impjax.models import zoo
from tests.helpers import eager_and_jit
from tests.helpers import zoo_model


@pytest.fixture(params=zoo.NAMES)
def member(request):
  return zoo_model(request.param)


def test_ranks_follow_the_group_scores_eager_and_jit(member):
  m, s = member
  importance = jax.tree.map(jnp.abs, m.params)
  ranks = eager_and_jit(lambda imp: structure.unit_ranks(s, m.params, imp), importance)
  scores = structure.group_scores(s, importance)
  assert set(ranks) == set(s.prunable())
  for name, r in ranks.items():
    v = np.asarray(scores[name]).reshape(-1, np.shape(r)[-1])
    want = np.argsort(np.argsort(-v, axis=-1, kind="stable"), axis=-1, kind="stable")
    np.testing.assert_array_equal(np.asarray(r).reshape(v.shape), want)
  index = structure.unit_ranks(s, m.params)
  assert {n: np.shape(r) for n, r in index.items()} == {n: np.shape(r) for n, r in ranks.items()}


def test_a_width_keeps_the_first_units_of_every_group_and_compacts(member):
  m, s = member
  width = 0.4
  ranks = structure.unit_ranks(s, m.params, jax.tree.map(jnp.abs, m.params))
  keep = structure.keep_at_width(ranks, width)
  for name, k in keep.items():
    units = s.groups[name].units
    rows = np.asarray(k).reshape(-1, units)
    np.testing.assert_array_equal(rows.sum(-1), max(1, int(np.ceil(width * units))))
    np.testing.assert_array_equal(rows, np.asarray(ranks[name]).reshape(-1, units)
                                  < rows.sum(-1, keepdims=True))
  masks = structure.width_masks(s, m.params, ranks, width)
  np.testing.assert_equal(jax.tree.map(np.asarray, masks), jax.tree.map(
      np.asarray, groups.coupled_masks(m.params, s.prunable(), keep)))
  narrow = structure.at_width(s, m.params, ranks, width)
  small, small_fn = structure.compact_model(m.apply, m.params, s,
                                            jax.tree.map(np.asarray, keep), *m.inputs)
  if m.name != "resnet":  # (BN running statistics leave with their channel; see test_zoo)
    np.testing.assert_allclose(small_fn(small, *m.inputs), jax.jit(m.apply)(narrow, *m.inputs),
                               atol=1e-5)
  # Nothing outside the groups is narrowed: the stream, norms, stem and classifier are whole.
  members = {mm.path for c in s.prunable().values() for mm in groups.members(c)}
  for path, leaf in tree_utils.leaves_by_path(narrow).items():
    if path not in members:
      np.testing.assert_array_equal(leaf, tree_utils.leaves_by_path(m.params)[path])


def test_ordered_dropout_over_a_structure_trains_the_sampled_width():
  m, s = zoo_model("vit_scan")
  ranks = structure.unit_ranks(s, m.params)
  loss = lambda p, x: jnp.sum(m.apply(p, x) ** 2)
  wrapped = transforms.ordered_dropout(loss, lambda key: jnp.float32(0.5), structure=s)
  got, grads = jax.jit(jax.value_and_grad(wrapped))(m.params, jax.random.key(0), ranks,
                                                   *m.inputs)
  want = loss(structure.at_width(s, m.params, ranks, 0.5), *m.inputs)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The dropped half of every group gets no gradient; the kept half does.
  keep = structure.keep_at_width(ranks, 0.5)
  masks = groups.coupled_masks(m.params, s.prunable(), keep)
  for path, g in tree_utils.leaves_by_path(grads).items():
    mask = np.broadcast_to(np.asarray(tree_utils.leaves_by_path(masks)[path]), np.shape(g))
    assert not np.asarray(g)[~mask].any(), path
  with pytest.raises(ValueError, match="not both"):
    transforms.ordered_dropout(loss, rules=[], structure=s)
  with pytest.raises(ValueError, match="does not have"):
    structure.width_masks(s, m.params, {"hidden:nowhere": jnp.arange(3)}, 0.5)


@pytest.mark.parametrize("name", ["gemma", "gemma_mha", "minilm"])
def test_slice_width_rebuilds_an_nnx_zoo_model_that_equals_it_masked(name):
  """The zoo's NNX members, sliced by their importance ranks: the user's class rebuilt at the
  config fit_config finds, computing what the model computes at that width."""
  m, s = zoo_model(name)
  ranks = structure.unit_ranks(s, m.params, jax.tree.map(jnp.abs, m.params))
  small, config = slicing.slice_width(m.model, 0.5, *m.inputs, config=m.config, ranks=ranks)
  expected = {"gemma": dict(num_heads=4, num_kv_heads=2, mlp_dim=20),
              "gemma_mha": dict(num_heads=2, num_kv_heads=2, mlp_dim=20),
              "minilm": dict(num_heads=(2, 2), intermediate_sizes=(20, 20))}[name]
  assert config == dataclasses.replace(m.config, **expected)
  assert isinstance(small, type(m.model))
  narrow = structure.at_width(s, m.params, ranks, 0.5)
  np.testing.assert_allclose(small(*m.inputs), jax.jit(m.apply)(narrow, *m.inputs), atol=1e-5)

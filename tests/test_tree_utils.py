"""Tests for impjax.tree_utils: readable key paths and path-naming checks."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import tree_utils


class Variable(NamedTuple):  # flattens with GetAttrKey('value'), like an NNX Variable
  value: jax.Array


class Pair(NamedTuple):
  first: jax.Array
  second: jax.Array


class Swapped(NamedTuple):
  second: jax.Array
  first: jax.Array


class Opaque:
  """A pytree node registered without keys: its children get FlattenedIndexKey paths."""

  def __init__(self, a, b):
    self.a, self.b = a, b


jax.tree_util.register_pytree_node(Opaque, lambda o: ((o.a, o.b), None),
                                   lambda _, c: Opaque(*c))


def test_path_str_dict_and_list():
  tree = {"layers": [{"kernel": 1}, {"kernel": 2, "bias": 3}], "head": (4,)}
  assert tree_utils.path_names(tree) == [
      "head/0", "layers/0/kernel", "layers/1/bias", "layers/1/kernel"]


def test_path_str_nnx_like_value_dropped_other_attrs_kept():
  tree = {"dense": {"kernel": Variable(jnp.ones(2))}, "p": Pair(1, 2)}
  assert tree_utils.path_names(tree) == ["dense/kernel", "p/first", "p/second"]
  (path, _), = jax.tree_util.tree_flatten_with_path({"w": Variable(0.0)})[0]
  assert isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value"
  assert tree_utils.path_str(path) == "w"


def test_path_str_flattened_index_key():
  tree = {"o": Opaque(1, [2, 3])}
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert isinstance(paths[0][1], jax.tree_util.FlattenedIndexKey)
  assert tree_utils.path_names(tree) == ["o/0", "o/1/0", "o/1/1"]


def test_map_with_path_passes_path_first():
  out = tree_utils.map_with_path(lambda p, x, y: f"{p}={x + y}", {"a": [1, 2], "b": 3},
                                 {"a": [10, 20], "b": 30})
  assert out == {"a": ["a/0=11", "a/1=22"], "b": "b=33"}


def test_check_same_structure_passes_for_equal_trees():
  a = {"x": jnp.ones((2, 3)), "y": [jnp.zeros(4)]}
  tree_utils.check_same_structure(a, jax.tree.map(lambda v: v + 1, a), names=("a", "b"))


def test_check_same_structure_names_missing_and_extra_paths():
  ref = {"dense": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}, "head": jnp.ones(1)}
  other = {"dense": {"kernel": jnp.ones(2)}, "head": jnp.ones(1), "extra": jnp.ones(1)}
  with pytest.raises(ValueError) as info:
    tree_utils.check_same_structure(ref, other, names=("params", "grads"))
  msg = str(info.value)
  assert "params and grads" in msg
  assert "missing in grads: ['dense/bias']" in msg
  assert "not in params: ['extra']" in msg


def test_check_same_structure_names_shape_mismatch():
  ref = {"a": jnp.ones((2, 3)), "b": {"kernel": jnp.ones((4, 5))}}
  other = {"a": jnp.ones((2, 3)), "b": {"kernel": jnp.ones((5, 4))}}
  with pytest.raises(ValueError, match=r"grads leaf 'b/kernel' has shape \(5, 4\), "
                     r"but params has \(4, 5\)"):
    tree_utils.check_same_structure(ref, other, names=("params", "grads"))
  tree_utils.check_same_structure(ref, other, names=("params", "grads"), shapes=False)


def test_check_same_structure_order_difference():
  with pytest.raises(ValueError, match="different order"):
    tree_utils.check_same_structure(Pair(1.0, 2.0), Swapped(1.0, 2.0), names=("a", "b"))


def test_check_finite_names_every_bad_leaf():
  tree = {"ok": jnp.ones(3), "layer": {"nan": jnp.array([0.0, jnp.nan]),
                                       "inf": jnp.array([-jnp.inf])}}
  with pytest.raises(ValueError) as info:
    tree_utils.check_finite(tree, what="scores")
  msg = str(info.value)
  assert msg.startswith("scores has non-finite values")
  assert "layer/inf" in msg and "layer/nan" in msg and "'ok'" not in msg
  tree_utils.check_finite({"ok": jnp.ones(3), "none": None}, what="scores")


def test_check_finite_skips_traced_leaves():
  @jax.jit
  def f(x):
    tree_utils.check_finite({"x": x}, what="x")
    return x
  assert np.isnan(f(jnp.array(jnp.nan)))


@pytest.mark.parametrize("tree,expected", [
    ({"a": jnp.ones(2), "b": jnp.zeros(3)}, True),
    ({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])}, False),
    ({"a": jnp.array(jnp.nan)}, False),
    ({}, True),
])
def test_all_finite_eager_and_jit(tree, expected):
  assert bool(tree_utils.all_finite(tree)) is expected
  assert bool(jax.jit(tree_utils.all_finite)(tree)) is expected


def test_check_fraction_and_is_concrete():
  for ok in (0, 0.0, 0.5, 1, np.array([0.0, 1.0]), jnp.float32(0.3)):
    tree_utils.check_fraction(ok, what="sparsity")
  for bad in (-0.01, 1.01, np.array([0.5, 2.0]), float("nan")):
    with pytest.raises(ValueError, match="sparsity must lie in"):
      tree_utils.check_fraction(bad, what="sparsity")
  assert tree_utils.is_concrete(jnp.ones(1)) and tree_utils.is_concrete(1.0)
  seen = []
  jax.jit(lambda x: seen.append(tree_utils.is_concrete(x)) or x)(1.0)
  assert seen == [False]

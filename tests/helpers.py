"""Shared test helpers: seeded random trees, numpy copies, eager-vs-jit agreement, and small impjax
models. Tests import them as ``from tests.helpers import ...``; ``conftest.py`` keeps only
fixtures and hooks."""

import functools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from impjax import models
from impjax import structure
from impjax.models import zoo

# A tiny CNN + MLP, listed in sorted key order (the order ``random_tree`` draws the leaves).
SHAPES = {
    "conv": {"bias": (8,), "kernel": (3, 3, 1, 8)},
    "dense1": {"bias": (16,), "kernel": (32, 16)},
    "dense2": {"bias": (10,), "kernel": (16, 10)},
}


def random_tree(seed, shapes=None, dtype=np.float32, sample=None):
  """A tree like ``shapes`` (nested dicts whose leaves are shape tuples; ``SHAPES`` if None).

  One numpy generator, ``np.random.default_rng(seed)``, draws the leaves in the order ``shapes``
  lists them (depth first), each as ``sample(rng, shape)`` cast to ``dtype``: standard normal
  values unless ``sample`` is given (e.g. integers, for ties). The same seed and shapes give the
  same tree. For a tree like an existing one, pass ``jax.tree.map(np.shape, tree)``: its keys
  come sorted, the order of ``jax.tree.leaves``.
  """
  rng = np.random.default_rng(seed)
  sample = sample or (lambda rng, shape: rng.standard_normal(shape))

  def build(node):
    if isinstance(node, dict):
      return {k: build(v) for k, v in node.items()}
    return jnp.asarray(np.asarray(sample(rng, node)).astype(dtype))
  return build(SHAPES if shapes is None else shapes)


def to_numpy(tree):
  """Nested dict of numpy float64 copies (references are computed in float64)."""
  if isinstance(tree, dict):
    return {k: to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, dtype=np.float64)


def eager_and_jit(fn, *args, rtol=None, atol=None):
  """``fn(*args)`` eagerly and under ``jax.jit``: asserts the two agree and returns the eager one.

  The trees must be bit-identical unless a tolerance is given (results with reductions may differ
  by float32 rounding, since XLA fuses and reorders sums under ``jit``).
  """
  eager = fn(*args)
  jitted = jax.jit(fn)(*args)
  if rtol is None and atol is None:
    chex.assert_trees_all_equal(eager, jitted)
  else:
    chex.assert_trees_all_close(eager, jitted, rtol=rtol or 0.0, atol=atol or 0.0)
  return eager


def build(cls, *args):
  """``(graphdef, params)`` of ``cls(*args)``, initialized in one jitted call (fast to compile)."""
  make = lambda: cls(*args, rngs=nnx.Rngs(0))
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make(), nnx.Param)))()
  return nnx.graphdef(nnx.eval_shape(make)), params


def mlp_with_bits(in_features, hidden, num_classes, hidden_bits, head_bits):
  """``(graphdef, params, bits)`` of a one-hidden-layer ``models.MLP``; ``bits`` quantizes its
  two kernels and leaves the biases float (``None``)."""
  graphdef, params = build(models.MLP, in_features, (hidden,), num_classes)
  bits = jax.tree.map(lambda _: None, params)
  bits["hidden"][0]["kernel"], bits["head"]["kernel"] = hidden_bits, head_bits
  return graphdef, params, bits


@functools.lru_cache(maxsize=None)
def zoo_model(name):
  """``(member, structure)`` of the tiny zoo model ``name``, built and discovered once per test
  process (the members are read-only in the tests)."""
  member = zoo.build(name)
  return member, structure.discover(member.apply, member.params, *member.inputs)

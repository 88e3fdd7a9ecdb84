"""Shared fixtures: small parameter trees (a tiny CNN + MLP) with seeded random values."""

import jax.numpy as jnp
import numpy as np
import pytest

SHAPES = {
    "conv": {"kernel": (3, 3, 1, 8), "bias": (8,)},
    "dense1": {"kernel": (32, 16), "bias": (16,)},
    "dense2": {"kernel": (16, 10), "bias": (10,)},
}


def random_tree(seed, shapes=None, dtype=np.float32):
  """A tree like ``shapes`` with standard normal values (a fresh generator per seed)."""
  rng = np.random.default_rng(seed)
  shapes = SHAPES if shapes is None else shapes

  def build(node):
    if isinstance(node, dict):
      return {k: build(v) for k, v in sorted(node.items())}
    return jnp.asarray(rng.standard_normal(node).astype(dtype))
  return build(shapes)


def to_numpy(tree):
  """Nested dict of numpy float64 copies (references are computed in float64)."""
  if isinstance(tree, dict):
    return {k: to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, dtype=np.float64)


@pytest.fixture
def params():
  return random_tree(0)


@pytest.fixture
def grads():
  return random_tree(1)

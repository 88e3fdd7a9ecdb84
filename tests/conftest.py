"""Shared fixtures: small parameter trees (a tiny CNN + MLP) with seeded random values, and
small impjax models."""

import atexit
import functools
import os
import shutil
import tempfile

# Each test session (each pytest-xdist worker) prepares the datasets in its own directory, set
# before impjax is imported: parallel workers never race on one tfds directory, and the tests
# never touch the user's data directory.
os.environ["IMPJAX_DATA_DIR"] = tempfile.mkdtemp(prefix="impjax_test_data_")
atexit.register(functools.partial(shutil.rmtree, os.environ["IMPJAX_DATA_DIR"], True))

from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import models  # pylint: disable=g-import-not-at-top,wrong-import-position

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

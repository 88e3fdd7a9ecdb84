"""Memory options of the transforms' state: bf16 importance estimates and bit-packed masks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from impjax.transforms import masking
from tests.helpers import random_tree


def _tree(seed):
  return random_tree(seed, {"a": {"kernel": (37, 11), "bias": (11,)}, "b": {"kernel": (11, 5)}})


def _nbytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def test_pack_roundtrip_and_size():
  masks = jax.tree.map(lambda x: x > 0, _tree(0))
  packed = masking.pack_masks(masks)
  assert packed["a"]["kernel"].dtype == jnp.uint8
  assert packed["a"]["kernel"].size == int(np.ceil(37 * 11 / 8))
  chex.assert_trees_all_equal(masking.unpack_masks(packed, masks), masks)
  chex.assert_trees_all_equal(jax.jit(masking.unpack_masks)(packed, masks), masks)
  ref = np.packbits(np.asarray(masks["b"]["kernel"]).reshape(-1))
  np.testing.assert_array_equal(packed["b"]["kernel"], ref)


@pytest.mark.slow  # over ~10 s
def test_packed_masked_training_equals_unpacked():
  sched = ij.schedules.polynomial(0.0, 0.8, 1, 7, 2)
  runs = []
  for pack in (False, True):
    params = _tree(0)
    tx = ij.transforms.prune(optax.adam(1e-2), sched, "taylor", pack=pack)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(9):
      updates, state = step(_tree(10 + i), state, params)
      params = optax.apply_updates(params, updates)
    runs.append((params, ij.transforms.current_masks(state, params), state))
  chex.assert_trees_all_equal(runs[1][0], runs[0][0])
  chex.assert_trees_all_equal(runs[1][1], runs[0][1])
  packed_bytes = _nbytes(runs[1][2].masks)
  bool_bytes = _nbytes(runs[0][2].masks)
  assert packed_bytes <= bool_bytes / 8 + 8


def test_bf16_estimator_state_tracks_float32():
  params = _tree(0)
  stat = lambda p, g: ij.scores.fisher(g)
  f32, bf16 = ij.estimators.ema(stat, 0.9), ij.estimators.ema(stat, 0.9, dtype=jnp.bfloat16)
  s32, s16 = f32.init(params), bf16.init(params)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(s16.value))
  assert _nbytes(s16.value) * 2 == _nbytes(s32.value)
  for i in range(5):
    v32, s32 = f32.update(s32, params, _tree(20 + i))
    v16, s16 = jax.jit(bf16.update)(s16, params, _tree(20 + i))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v16))
  chex.assert_trees_all_close(v16, v32, rtol=2e-2)

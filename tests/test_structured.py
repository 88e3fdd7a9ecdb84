"""Coupled unit scores and masks, AMP binary search, and compaction into a smaller MiniLM."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import pruning
from impjax import scores
from impjax import transforms
from impjax.models import minilm
from impjax.models import num_params
from impjax import groups

CONFIG = minilm.MiniLMConfig(vocab_size=40, hidden_size=8, num_heads=(3, 2), head_dim=4,
                             intermediate_sizes=(12, 10), max_position=8)


def setup(seed=0):
  model = minilm.MiniLM(CONFIG, rngs=nnx.Rngs(seed))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 40, (4, 8)).astype(np.int32)
  mask = (np.arange(8)[None] < np.array([8, 5, 3, 6])[:, None]).astype(np.int32)
  return model, params, ids * mask, mask


def test_unit_scores_against_loops():
  _, params, _, _ = setup()
  imp = scores.magnitude(params)
  coupled = minilm.encoder_groups(CONFIG)
  got = jax.jit(lambda t: groups.coupled_scores(t, coupled["layers/1/mlp"]))(imp)
  layer = jax.tree.map(np.asarray, params["layers"][1])
  expected = [np.abs(layer["intermediate"]["kernel"][:, u]).sum()
              + abs(layer["intermediate"]["bias"][u]) + np.abs(layer["output"]["kernel"][u]).sum()
              for u in range(10)]
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(groups.coupled_scores(imp, coupled["layers/1/mlp"]), got, rtol=1e-6)
  heads = groups.coupled_scores(imp, coupled["layers/0/heads"])
  layer = jax.tree.map(np.asarray, params["layers"][0])
  expected = []
  for h in range(3):
    cols = slice(4 * h, 4 * h + 4)
    expected.append(sum(np.abs(layer[n]["kernel"][:, cols]).sum() + np.abs(layer[n]["bias"][cols]).sum()
                        for n in ("query", "key", "value"))
                    + np.abs(layer["attention_out"]["kernel"][cols]).sum())
  np.testing.assert_allclose(heads, expected, rtol=1e-5)


@pytest.mark.slow  # over ~10 s
def test_masked_model_equals_gated_model_and_compacted_model():
  model, params, ids, mask = setup()
  keep = {"layers/0/mlp": np.arange(12) % 3 != 0, "layers/1/mlp": np.arange(10) < 4,
          "layers/0/heads": np.array([True, False, True]), "layers/1/heads": np.array([False, True])}
  masks = groups.coupled_masks(params, minilm.encoder_groups(CONFIG), keep)
  masked = minilm.from_params(CONFIG, transforms.apply_masks(params, masks))
  gated = model.encode(ids, mask, head_gates=[jnp.asarray(keep[f"layers/{i}/heads"], jnp.float32)
                                              for i in range(2)],
                       unit_gates=[jnp.asarray(keep[f"layers/{i}/mlp"], jnp.float32)
                                   for i in range(2)])
  small, config = minilm.compact_encoder(masked, keep)
  assert config.num_heads == (2, 1) and config.intermediate_sizes == (8, 4)
  np.testing.assert_allclose(masked.encode(ids, mask), gated, atol=1e-5)
  np.testing.assert_allclose(small.encode(ids, mask), masked.encode(ids, mask), atol=1e-5)
  # parameter count: every dropped head removes 4 * (3 * (8 + 1) + 8), every unit 8 + 1 + 8
  dense = num_params(model)
  assert num_params(small) == dense - 2 * 4 * (3 * 9 + 8) - 10 * 17


def test_compact_errors_name_the_group():
  model, params, _, _ = setup()
  coupled = minilm.encoder_groups(CONFIG)
  with pytest.raises(ValueError, match="layers/0/mlp"):
    pruning.compact(params, coupled, {**{k: None for k in coupled}, "layers/0/mlp": np.ones(5)})
  with pytest.raises(ValueError, match="layers/9/mlp"):
    minilm.compact_encoder(model, {"layers/9/mlp": np.ones(3, bool)})
  with pytest.raises(ValueError, match="not a leaf"):
    groups.coupled_scores(params, groups.Coupled((("layers/0/nope/kernel", 1),)))


def test_keep_top_exact_count_and_order():
  s = jnp.array([0.5, 0.1, 0.9, 0.1, 0.7])
  for k in range(6):
    keep = pruning.keep_top(s, k)
    assert int(keep.sum()) == k
    if 0 < k < 5:
      assert float(s[keep].min()) >= float(s[~keep].max())


def test_search_keep_matches_brute_force():
  for threshold in (0, 1, 17, 63, 64):
    accept = lambda k, t=threshold: k >= t
    assert pruning.search_keep(accept, 64, probes=7) == threshold
  assert pruning.search_keep(lambda k: k >= 40, 100, probes=3) >= 40  # few probes: a safe upper k


def test_amp_search_against_sequential_brute_force():
  rng = np.random.default_rng(0)
  unit = {"a": jnp.asarray(rng.random(16)), "b": jnp.asarray(rng.random(16)),
          "c": jnp.asarray(rng.random(16))}
  weight = {"a": 0.004, "b": 0.01, "c": 0.002}  # quality lost per pruned unit of each layer

  def quality(keep):
    return 1.0 - sum(weight[n] * int((~np.asarray(m)).sum()) for n, m in keep.items())

  got = pruning.amp_search(unit, quality, tolerance=0.09, probes=5)
  decided, expected = {}, {}
  for j, name in enumerate(["c", "b", "a"], start=1):
    floor = 1.0 - 0.09 * j / 3
    k = min(k for k in range(17) if quality(
        {**decided, name: pruning.keep_top(unit[name], k)}) >= floor)
    decided[name] = pruning.keep_top(unit[name], k)
    expected[name] = k
  assert {n: int(m.sum()) for n, m in got.items()} == expected
  assert len(set(expected.values())) > 1  # non-uniform
  assert quality(got) >= 1.0 - 0.09
  np.testing.assert_array_equal(got["a"], pruning.keep_top(unit["a"], expected["a"]))

"""The model zoo under impjax's structure tools: every member's discovered MLP-unit and head
groups equal a hand-written expectation, its default 2:4 rules run along each kernel's
contraction axis, half its units and heads compacted match the masked model, per-channel
quantization, targeted dropout over its units, per-layer selection of stacked kernels, and the
member's own class rebuilt at the compacted widths where its config can express them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import select
from impjax import structure
from impjax import transforms
from impjax import tree_utils
from impjax.models import minilm
from impjax.models import zoo
from impjax.transforms.targeted_dropout import targeted_unit_masks
from tests.helpers import zoo_model


def _members(group):
  return sorted((m.path, m.axis, m.inner, m.outer, m.layer) for m in groups.members(group.coupled))


def _m(path, axis, inner=1, outer=1, layer=None):
  return (path, axis, inner, outer, layer)


def _vit_expected(c, scan):
  """Per block: the MLP's hidden units and the heads of q, k, v (kernel and bias) and out."""
  blocks = ["Transformer/encoderblock"] if scan else [
      f"Transformer/encoderblock_{i}" for i in range(c.depth)]
  s, layer = (1, 0) if scan else (0, None)
  hidden, heads = [], []
  for b in blocks:
    mlp, att = f"{b}/MlpBlock_0", f"{b}/MultiHeadDotProductAttention_0"
    hidden.append((c.mlp_dim, sorted([_m(f"{mlp}/Dense_0/bias", s, layer=layer),
                                      _m(f"{mlp}/Dense_0/kernel", s + 1, layer=layer),
                                      _m(f"{mlp}/Dense_1/kernel", s, layer=layer)])))
    heads.append((c.num_heads, sorted(
        [_m(f"{att}/{n}/kernel", s + 1, layer=layer) for n in ("query", "key", "value")]
        + [_m(f"{att}/{n}/bias", s, layer=layer) for n in ("query", "key", "value")]
        + [_m(f"{att}/out/kernel", s, layer=layer)])))
  return {"hidden": hidden, "heads": heads}


def _lm_expected(c):
  hidden, heads = [], []
  for i in range(c.depth):
    mlp, att = f"decoderblock_{i}/MlpBlock_0", f"decoderblock_{i}/MultiHeadDotProductAttention_0"
    hidden.append((c.mlp_dim, sorted([_m(f"{mlp}/Dense_0/bias", 0), _m(f"{mlp}/Dense_0/kernel", 1),
                                      _m(f"{mlp}/Dense_1/kernel", 0)])))
    heads.append((c.num_heads, sorted(
        [_m(f"{att}/{n}/kernel", 1) for n in ("query", "key", "value")]
        + [_m(f"{att}/out/kernel", 0)])))
  return {"hidden": hidden, "heads": heads}


def _gemma_expected(c):
  """A head unit is one kv head with the query heads of its group (inner = heads per group);
  a query group's index runs inside each kv head (outer = kv heads)."""
  g = c.num_groups
  hidden, heads, query_groups = [], [], []
  for i in range(c.depth):
    b = f"blocks/{i}"
    hidden.append((c.mlp_dim, [_m(f"{b}/mlp/gating_einsum/kernel", 2),
                               _m(f"{b}/mlp/linear/kernel", 0)]))
    heads.append((c.num_kv_heads, [_m(f"{b}/attn/attn_vec_einsum/kernel", 0, inner=g),
                                   _m(f"{b}/attn/kv_einsum/kernel", 1),
                                   _m(f"{b}/attn/q_einsum/kernel", 0, inner=g)]))
    if g > 1:
      query_groups.append((g, [_m(f"{b}/attn/attn_vec_einsum/kernel", 0, outer=c.num_kv_heads),
                               _m(f"{b}/attn/q_einsum/kernel", 0, outer=c.num_kv_heads)]))
  return {"hidden": hidden, "heads": heads, "query_groups": query_groups}


def _resnet_expected(c):
  """Each basic block's inner channels: its first conv's outputs, their BatchNorm scale, bias
  and running statistics, and its second conv's inputs."""
  hidden = []
  i = 0
  for stage, n in enumerate(c.stage_sizes):
    for _ in range(n):
      b = f"BasicBlock_{i}"
      hidden.append((c.num_filters * 2 ** stage, sorted(
          [_m(f"params/{b}/Conv_0/kernel", 3), _m(f"params/{b}/Conv_1/kernel", 2)]
          + [_m(f"params/{b}/BatchNorm_0/{n}", 0) for n in ("scale", "bias")]
          + [_m(f"batch_stats/{b}/BatchNorm_0/{n}", 0) for n in ("mean", "var")])))
      i += 1
  return {"hidden": hidden, "heads": []}


def _minilm_expected(c):
  """Per layer: an MLP unit's intermediate column, bias entry and output row; a head's
  ``head_dim`` columns of the query, key and value kernels and biases and rows of
  ``attention_out``."""
  out = {"hidden": [], "heads": []}
  for i in range(c.num_layers):
    p = f"layers/{i}"
    out["hidden"].append((c.intermediate_sizes[i], [
        _m(f"{p}/intermediate/kernel", 1), _m(f"{p}/intermediate/bias", 0),
        _m(f"{p}/output/kernel", 0)]))
    out["heads"].append((c.num_heads[i], [
        _m(f"{p}/{n}/{leaf}", 1 if leaf == "kernel" else 0, inner=c.head_dim)
        for n in ("query", "key", "value") for leaf in ("kernel", "bias")]
        + [_m(f"{p}/attention_out/kernel", 0, inner=c.head_dim)]))
  return out


def test_minilms_named_groups_are_its_discovered_ones():
  member, found = zoo_model("minilm")
  named = minilm.encoder_groups(member.config)
  assert sorted(named) == sorted(f"layers/{i}/{kind}" for i in range(member.config.num_layers)
                                 for kind in ("mlp", "heads"))
  entries = lambda c: sorted((m.path, m.axis, m.inner, m.outer, m.layer) for m in groups.members(c))
  assert (sorted(entries(c) for c in named.values())
          == sorted(entries(c) for c in found.prunable().values()))


def _expected(member):
  c = member.config
  if member.name in ("vit", "vit_scan"):
    return _vit_expected(c, member.name == "vit_scan")
  if member.name == "lm":
    return _lm_expected(c)
  if member.name in ("gemma", "gemma_mha"):
    return _gemma_expected(c)
  if member.name == "resnet":
    return _resnet_expected(c)
  return _minilm_expected(c)


@pytest.fixture(params=zoo.NAMES)
def built(request):
  return zoo_model(request.param)


@pytest.fixture
def member(built):
  return built[0]


@pytest.fixture
def found(built):
  return built[1]


def test_discovered_groups_equal_the_hand_written_ones(member, found):
  expected = _expected(member)
  for kind, want in expected.items():
    got = [(g.units, _members(g)) for g in found.groups.values() if g.kind == kind]
    assert sorted(got) == sorted((n, sorted(ms)) for n, ms in want), (member.name, kind)
  prunable = found.prunable()
  assert len(prunable) == len(expected["hidden"]) + len(expected["heads"])


def test_stems_classifiers_and_embeddings_are_read_as_such(member, found):
  k = found.kernels
  reads = sorted(p for p, a in k.items() if a.reads_input and a.kind != "embedding")
  writes = sorted(p for p, a in k.items() if a.writes_output)
  embeddings = sorted(p for p, a in k.items() if a.kind == "embedding")
  want = {
      "vit": (["embedding/kernel"], ["head/kernel"], []),
      "vit_scan": (["embedding/kernel"], ["head/kernel"], []),
      "lm": ([], ["logits/kernel"], ["embed/embedding"]),
      "gemma": ([], ["embedder/embedding"], ["embedder/embedding"]),
      "gemma_mha": ([], ["embedder/embedding"], ["embedder/embedding"]),
      "resnet": (["params/conv_init/kernel"], ["params/head/kernel"], []),
      "minilm": ([], [], ["embeddings/position/embedding", "embeddings/token_type/embedding",
                          "embeddings/word/embedding"]),
  }[member.name]
  assert (reads, writes, embeddings) == want
  if member.name.startswith("gemma"):  # the tied embedding is both the stem and the unembedding
    (stream,) = [g for g in found.groups.values() if g.kind == "stream"]
    assert ("embedder/embedding", 1) in {(m.path, m.axis) for m in groups.members(stream.coupled)}


def test_default_two_four_runs_along_each_kernels_contraction_axis(member, found):
  params = member.params
  the_plan = groups.plan(params, structure.rules(found, params, groups.n_of_m(2, 4)))
  masks = select.masks(jax.tree.map(jnp.abs, params), the_plan, 0.5)
  planned = 0
  for path, p, g, m in zip(tree_utils.path_names(params), jax.tree.leaves(params),
                           jax.tree.leaves(the_plan), jax.tree.leaves(masks)):
    k = found.kernels.get(path)
    if g.kind == "dense":
      assert k is None or k.kind == "embedding" or k.reads_input or k.writes_output or all(
          np.shape(p)[a] % 4 for a in k.contraction), path
      continue
    planned += 1
    assert g.kind == "n_of_m" and g.axis in k.contraction and g.axis != k.layer, path
    moved = np.moveaxis(np.asarray(m), g.axis, -1)
    assert (moved.reshape(moved.shape[:-1] + (-1, 4)).sum(-1) == 2).all(), path
  assert planned >= 2 * len(_expected(member)["hidden"])


def _keep_half(member, s):
  keep = {}
  for name, coupled in s.prunable().items():
    row = np.arange(s.groups[name].units) % 2 == 1
    stacked = any(m.layer is not None for m in groups.members(coupled))
    keep[name] = np.tile(row, (member.config.depth, 1)) if stacked else row
  return keep


# The config each member's half-compacted params fit, by hand; None where the config cannot
# express them: the ViT derives a head's width from width / num_heads, the ResNet has one
# filter count per stage.
_FITTED = {"vit": None, "vit_scan": None, "resnet": None,
           "lm": dict(num_heads=1, qkv_dim=6, mlp_dim=20),
           "gemma": dict(num_heads=2, num_kv_heads=1, mlp_dim=20),
           "gemma_mha": dict(num_heads=2, num_kv_heads=2, mlp_dim=20),
           "minilm": dict(num_heads=(1, 1), intermediate_sizes=(20, 20))}


def _abstract_params(member):
  shape = member.inputs[0].shape
  return lambda c: jax.eval_shape(lambda: zoo.from_config(member.name, c, shape).params)


def test_the_users_model_class_is_rebuilt_at_the_compacted_widths(member, found):
  small, small_fn = structure.compact_model(member.apply, member.params, found,
                                            _keep_half(member, found), *member.inputs)
  want = _FITTED[member.name]
  if want is None:
    with pytest.raises(ValueError, match="No config fits these params.*nearest"):
      structure.fit_config(member.config, _abstract_params(member), small)
    return
  config = structure.fit_config(member.config, _abstract_params(member), small)
  assert config == dataclasses.replace(member.config, **want)
  rebuilt = zoo.from_config(member.name, config, member.inputs[0].shape)
  np.testing.assert_allclose(jax.jit(rebuilt.apply)(small, *member.inputs),
                             jax.jit(small_fn)(small, *member.inputs), atol=1e-5)


def test_a_vit_with_its_heads_whole_is_rebuilt_at_half_its_mlp():
  member, found = zoo_model("vit_scan")
  keep = {name: (np.arange(found.groups[name].units) % 2 == 1) | (found.groups[name].kind != "hidden")
          for name in found.prunable()}
  keep = {name: np.tile(k, (member.config.depth, 1)) for name, k in keep.items()}
  small, small_fn = structure.compact_model(member.apply, member.params, found, keep,
                                            *member.inputs)
  config = structure.fit_config(member.config, _abstract_params(member), small)
  assert config == dataclasses.replace(member.config, mlp_dim=20)
  rebuilt = zoo.from_config(member.name, config, member.inputs[0].shape)
  np.testing.assert_allclose(jax.jit(rebuilt.apply)(small, *member.inputs),
                             jax.jit(small_fn)(small, *member.inputs), atol=1e-5)


def test_half_the_units_and_heads_compacted_match_the_masked_model(member, found):
  params = member.params
  keep = _keep_half(member, found)
  small, small_fn = structure.compact_model(member.apply, params, found, keep, *member.inputs)
  masks = groups.coupled_masks(params, found.prunable(), keep)
  # A removed channel's running statistics leave with it; in the masked model its BatchNorm
  # output is the BN bias, so the masked reference zeroes parameters only.
  masked = jax.tree_util.tree_map_with_path(
      lambda path, v, m: v if "batch_stats" in tree_utils.path_str(path) else jnp.where(m, v, 0),
      params, masks)
  apply = jax.jit(member.apply)
  np.testing.assert_allclose(small_fn(small, *member.inputs), apply(masked, *member.inputs),
                             atol=1e-5)
  longer = tuple(jnp.concatenate([x, x[:1]]) for x in member.inputs)  # another batch size
  np.testing.assert_allclose(small_fn(small, *longer), apply(masked, *longer), atol=1e-5)
  removed = sum(int(np.size(p) - np.sum(np.broadcast_to(m, np.shape(p))))
                for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(params)))
  n = lambda tree: sum(np.size(a) for a in jax.tree.leaves(tree))
  assert removed > 0 and n(small) == n(params) - removed
  # Every kept entry is the original's: the small params are the masked ones' remaining entries.
  for path, leaf in tree_utils.leaves_by_path(small).items():
    kept = np.asarray(tree_utils.leaves_by_path(masks)[path])
    full = np.asarray(tree_utils.leaves_by_path(params)[path])
    np.testing.assert_array_equal(np.sort(np.asarray(leaf).ravel()),
                                  np.sort(full[np.broadcast_to(kept, full.shape)].ravel()))


def test_per_channel_quantization_has_one_scale_per_output_channel(member, found):
  params = member.params
  schemes = structure.schemes(found, params)
  kernels = {p for p, k in found.kernels.items() if k.kind != "embedding"}
  bits = tree_utils.map_with_path(lambda path, _: 4 if path in kernels else None, params)
  out = tree_utils.leaves_by_path(jax.jit(lambda p: transforms.fake_quant(p, bits, schemes))(
      params))
  leaves = tree_utils.leaves_by_path(params)
  by_path = tree_utils.leaves_by_path(schemes)
  for path in kernels:
    k, w = found.kernels[path], np.asarray(leaves[path], np.float64)
    own = set(k.output) | ({k.layer} if k.layer is not None else set())
    assert set(by_path[path].channel_axes) == own, path
    # By hand: one symmetric 4-bit scale per index of the output (and layer) axes.
    absmax = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a not in own), keepdims=True)
    assert absmax.size == np.prod([w.shape[a] for a in own])
    scale = np.where(absmax > 0, absmax / 7, 1.0)
    np.testing.assert_allclose(out[path], np.clip(np.round(w / scale), -7, 7) * scale,
                               rtol=1e-5, atol=1e-6, err_msg=path)


def _unit_masks_fn(found, alpha):
  return jax.jit(lambda key, imp, p: targeted_unit_masks(key, found, imp, p, 0.5,
                                                                          alpha))


def test_targeted_dropout_drops_the_weakest_units_of_each_layer_and_nothing_else(member, found):
  params = member.params
  importance = jax.tree.map(jnp.abs, params)
  masks = tree_utils.leaves_by_path(_unit_masks_fn(found, 1.0)(jax.random.key(0), importance, params))
  # By hand: every layer of every group drops its floor(units / 2) lowest-scoring units.
  keep = {}
  for name, score in structure.group_scores(found, importance, how="l2").items():
    rows = np.asarray(score).reshape(-1, score.shape[-1])
    units = rows.shape[-1]
    want = np.ones(rows.shape, bool)
    for row, w in zip(rows, want):
      w[row < np.sort(row)[units // 2]] = False
    keep[name] = want.reshape(score.shape)
  coupled = {n: found.groups[n].coupled for n in keep}
  want = tree_utils.leaves_by_path(groups.coupled_masks(params, coupled, keep))
  members = {m.path for c in coupled.values() for m in groups.members(c)}
  for path, leaf in tree_utils.leaves_by_path(params).items():
    got = np.broadcast_to(masks[path], np.shape(leaf))
    np.testing.assert_array_equal(got, np.broadcast_to(want[path], np.shape(leaf)), err_msg=path)
    if path not in members:  # residual stream, norms, stem, classifier: untouched
      assert got.all(), path
  assert any(not np.asarray(m).all() for m in masks.values())
  none = _unit_masks_fn(found, 0.0)(jax.random.key(0), importance, params)  # alpha 0: nothing dropped
  assert all(np.asarray(m).all() for m in jax.tree.leaves(none))


def test_a_default_global_selection_empties_no_layer_and_reports_each(member, found):
  params = member.params
  the_plan = groups.plan(params, structure.rules(found, params))
  # The first planned leaf (its first layer, when stacked) scaled far below the rest, so the
  # global budget alone would empty it.
  first = next(path for path, g in zip(tree_utils.path_names(params), jax.tree.leaves(the_plan))
               if g.kind != "dense")

  def weaken(path, w, g):
    w = jnp.abs(w)
    if path != first:
      return w
    if g.layer_axis is None:
      return w * 1e-6
    scale = jnp.ones(w.shape[g.layer_axis]).at[0].set(1e-6)
    return w * jnp.expand_dims(scale, [a for a in range(w.ndim) if a != g.layer_axis])
  importance = tree_utils.map_with_path(weaken, params, the_plan)
  masks = jax.jit(lambda imp: select.masks(imp, the_plan, 0.98))(importance)
  report = transforms.sparsity_report(masks, params, the_plan)
  for path, p, g, m in zip(tree_utils.path_names(params), jax.tree.leaves(params),
                           jax.tree.leaves(the_plan), jax.tree.leaves(masks)):
    if g.kind == "dense":
      continue
    kept = np.broadcast_to(np.asarray(m), np.shape(p))
    layers = np.moveaxis(kept, g.layer_axis, 0) if g.layer_axis is not None else kept[None]
    for i, layer in enumerate(layers):  # every layer keeps at least its 1% floor
      assert layer.sum() >= np.ceil(0.01 * layer.size), (path, i)
      if g.layer_axis is not None:
        assert report[f"{path}[{i}]"] == pytest.approx(1 - layer.mean()), (path, i)
  stacked = [g for g in jax.tree.leaves(the_plan) if g.layer_axis is not None]
  assert bool(stacked) == (member.name == "vit_scan")

"""Structure discovery: kernel axes and coupled groups read from the traced computation equal
hand-written expectations, and the discovered groups pass an ablation check."""

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import models
from impjax import pruning
from impjax import structure
from impjax import tree_utils


class _Block(nn.Module):
  scanned: bool = False

  @nn.compact
  def __call__(self, x, _=None):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(y, y)
    y = nn.Dense(48)(nn.LayerNorm()(x))
    x = x + nn.Dense(16)(nn.gelu(y))
    return (x, None) if self.scanned else x


class _Encoder(nn.Module):
  """A pre-LN Linen transformer: a loop of blocks, or one ``nn.scan`` over them."""
  scan: bool

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16, name="embed")(x)
    if self.scan:
      stack = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
      x, _ = stack(scanned=True, name="blocks")(x, None)
    else:
      for i in range(2):
        x = _Block(name=f"block{i}")(x)
    return nn.Dense(5, name="head")(nn.LayerNorm()(x).mean(1))


def _linen(scan):
  model = _Encoder(scan)
  x = jnp.ones((2, 7, 12))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  return (lambda p, x: model.apply({"params": p}, x)), params, x


def _members(group):
  return sorted((m.path, m.axis, m.inner, m.outer, m.layer) for m in groups.members(group.coupled))


def _by_kind(s, kind):
  return [g for g in s.groups.values() if g.kind == kind]


def test_mlp_axes_and_hidden_group():
  params = {"fc1": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)},
            "fc2": {"kernel": jnp.ones((8, 3)), "bias": jnp.ones(3)}}
  fn = lambda p, x: jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  s = structure.discover(fn, params, jnp.ones((2, 4)))
  assert s.kernels["fc1/kernel"] == structure.KernelAxes("dense", (0,), (1,), None, True, False)
  assert s.kernels["fc2/kernel"] == structure.KernelAxes("dense", (0,), (1,), None, False, True)
  (hidden,) = _by_kind(s, "hidden")
  assert _members(hidden) == [("fc1/bias", 0, 1, 1, None), ("fc1/kernel", 1, 1, 1, None),
                              ("fc2/kernel", 0, 1, 1, None)]
  assert hidden.exact and hidden.units == 8
  assert s.prunable() == {n: g.coupled for n, g in s.groups.items() if g.kind == "hidden"}


def test_abstract_params_need_no_memory():
  params = {"w1": jax.ShapeDtypeStruct((4096, 16384), jnp.bfloat16),
            "w2": jax.ShapeDtypeStruct((16384, 4096), jnp.bfloat16)}
  fn = lambda p, x: jax.nn.gelu(x @ p["w1"]) @ p["w2"]
  s = structure.discover(fn, params, jax.ShapeDtypeStruct((8, 4096), jnp.bfloat16))
  (hidden,) = _by_kind(s, "hidden")
  assert hidden.units == 16384


@pytest.mark.parametrize("scan", [False, True])
def test_linen_transformer_groups(scan):
  fn, params, x = _linen(scan)
  s = structure.discover(fn, params, x)
  blocks = ["blocks"] if scan else ["block0", "block1"]
  layer = 0 if scan else None
  off = 1 if scan else 0
  attn = "MultiHeadDotProductAttention_0"
  hidden, heads = _by_kind(s, "hidden"), _by_kind(s, "heads")
  assert len(hidden) == len(heads) == len(blocks)
  for b, h, a in zip(blocks, hidden, heads):
    assert _members(h) == [(f"{b}/Dense_0/bias", off, 1, 1, layer),
                           (f"{b}/Dense_0/kernel", 1 + off, 1, 1, layer),
                           (f"{b}/Dense_1/kernel", off, 1, 1, layer)]
    want = sorted([(f"{b}/{attn}/{n}/kernel", 1 + off, 1, 1, layer) for n in ("query", "key", "value")]
                  + [(f"{b}/{attn}/{n}/bias", off, 1, 1, layer) for n in ("query", "key", "value")]
                  + [(f"{b}/{attn}/out/kernel", off, 1, 1, layer)])
    assert _members(a) == want and a.units == 4 and a.exact
  (stream,) = _by_kind(s, "stream")
  stream_paths = {m.path for m in groups.members(stream.coupled)}
  assert {"embed/kernel", "head/kernel", "LayerNorm_0/scale"} <= stream_paths
  assert not stream.exact  # LayerNorm statistics run over the stream
  q = s.kernels[f"{blocks[0]}/{attn}/query/kernel"]
  o = s.kernels[f"{blocks[0]}/{attn}/out/kernel"]
  assert (q.contraction, q.output, q.layer) == ((off,), (1 + off, 2 + off), layer)
  assert (o.contraction, o.output, o.layer) == ((off, 1 + off), (2 + off,), layer)
  assert s.kernels["embed/kernel"].reads_input and s.kernels["head/kernel"].writes_output
  assert not any(k.reads_input or k.writes_output for p, k in s.kernels.items()
                 if p.startswith(tuple(blocks)))


def _ablate(fn, params, inputs, s, group):
  """Zeroes unit 0's producing slices (every member axis that is not a kernel's contraction
  axis) and returns the gradient of the consuming slices of unit 0 and of unit 1."""
  keep0 = np.arange(group.units) != 0
  members = groups.members(group.coupled)
  consumer = [m for m in members if m.path in s.kernels and m.axis in s.kernels[m.path].contraction]
  producer = groups.Coupled(tuple(m for m in members if m not in consumer))
  shape = groups.keep_shape(tree_utils.leaves_by_path(params), group.coupled)
  keep = np.broadcast_to(keep0, shape)
  masks = groups.coupled_masks(params, {"p": producer}, {"p": keep})
  zeroed = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, masks)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(fn(p, *inputs)))))(zeroed)
  def unit_grad(unit):
    one = np.zeros(shape, bool)
    one[..., unit] = True
    sel = groups.coupled_masks(params, {"c": groups.Coupled(tuple(consumer))}, {"c": one})
    return sum(float(jnp.abs(jnp.where(sel_leaf, g, 0)).sum()) for g, sel_leaf in zip(
        jax.tree.leaves(grads), jax.tree.leaves(sel)) if np.ndim(sel_leaf))
  return consumer, unit_grad(0), unit_grad(1)


@pytest.mark.parametrize("scan", [False, True])
def test_ablation_of_discovered_groups(scan):
  fn, params, x = _linen(scan)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  s = structure.discover(fn, params, x)
  for name, group in s.groups.items():
    if group.kind not in ("hidden", "heads"):
      continue
    consumer, removed, kept = _ablate(fn, params, (x,), s, group)
    assert consumer, name
    assert removed == 0.0, name
    assert kept > 0.0, name


def test_discovered_groups_compact_a_plain_function():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"fc1": {"kernel": jax.random.normal(k1, (4, 8)), "bias": jax.random.normal(k2, (8,))},
            "fc2": {"kernel": jax.random.normal(k3, (8, 3))}}
  fn = lambda p, x: jnp.tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"]
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  s = structure.discover(fn, params, x)
  keep = {n: np.arange(8) % 3 != 0 for n in s.prunable()}
  small = pruning.compact(params, s.prunable(), keep)
  masks = groups.coupled_masks(params, s.prunable(), keep)
  masked = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, masks)
  assert small["fc1"]["kernel"].shape == (4, 5) and small["fc2"]["kernel"].shape == (5, 3)
  np.testing.assert_allclose(fn(small, x), fn(masked, x), atol=1e-6)


class _GroupedQueryBlock(nnx.Module):
  """Gemma-style: RMSNorm, Einsum kernels, fused kv, grouped-query attention by repeating kv
  heads, a gated MLP whose gate and up projections share one kernel."""

  def __init__(self, rngs):
    self.q = nnx.Einsum("BTD,NDH->BTNH", (4, 16, 8), rngs=rngs)
    self.kv = nnx.Einsum("BSD,CKDH->CBSKH", (2, 2, 16, 8), rngs=rngs)
    self.o = nnx.Einsum("BTNH,NHD->BTD", (4, 8, 16), rngs=rngs)
    self.gating = nnx.Einsum("BTD,CDF->CBTF", (2, 16, 24), rngs=rngs)
    self.down = nnx.Einsum("BTF,FD->BTD", (24, 16), rngs=rngs)
    self.norm = nnx.RMSNorm(16, rngs=rngs)

  def __call__(self, x):
    y = self.norm(x)
    k, v = self.kv(y)
    k, v = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    probs = jax.nn.softmax(jnp.einsum("BTNH,BSNH->BNTS", self.q(y), k), axis=-1)
    x = x + self.o(jnp.einsum("BNTS,BSNH->BTNH", probs, v))
    gate, up = self.gating(self.norm(x))
    return x + self.down(jax.nn.gelu(gate) * up)


def _grouped_query_problem():
  """``(fn, params, x, structure)`` of the grouped-query block."""
  graphdef, state = nnx.split(_GroupedQueryBlock(nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  fn = lambda p, x: nnx.merge(graphdef, p)(x)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 16))
  return fn, params, x, structure.discover(fn, params, x)


def test_grouped_query_heads_are_kept_whole():
  fn, params, x, s = _grouped_query_problem()
  (heads,) = _by_kind(s, "heads")
  # A unit is one kv head with its two query heads (inner=2 along the query-head axis).
  assert heads.units == 2 and _members(heads) == [("kv/kernel", 1, 1, 1, None),
                                                  ("o/kernel", 0, 2, 1, None),
                                                  ("q/kernel", 0, 2, 1, None)]
  (groups_in_kv,) = _by_kind(s, "query_groups")
  assert _members(groups_in_kv) == [("o/kernel", 0, 1, 2, None), ("q/kernel", 0, 1, 2, None)]
  (hidden,) = _by_kind(s, "hidden")
  assert _members(hidden) == [("down/kernel", 0, 1, 1, None), ("gating/kernel", 2, 1, 1, None)]
  assert s.kernels["kv/kernel"].contraction == (2,) and s.kernels["kv/kernel"].output == (0, 1, 3)
  assert s.kernels["o/kernel"].contraction == (0, 1)
  # (A query group's output also reads the shared values, so it has no producer-only ablation.)
  for group in (heads, hidden):
    _, removed, kept = _ablate(fn, params, (x,), s, group)
    assert removed == 0.0 and kept > 0.0


def _keep_half(s, stacked_layers=None):
  keep = {}
  for name in s.prunable():
    n = s.groups[name].units
    row = np.arange(n) % 2 == 1
    keep[name] = np.tile(row, (stacked_layers, 1)) if stacked_layers else row
  return keep


def test_compacted_grouped_query_block_matches_the_masked_one():
  fn, params, x, s = _grouped_query_problem()
  keep = _keep_half(s)
  small, small_fn = structure.compact_model(fn, params, s, keep, x)
  assert small["q"]["kernel"].shape == (2, 16, 8) and small["kv"]["kernel"].shape == (2, 1, 16, 8)
  masks = groups.coupled_masks(params, s.prunable(), keep)
  masked = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, masks)
  np.testing.assert_allclose(small_fn(small, x), fn(masked, x), atol=1e-5)


def test_a_pooled_conv_feeding_a_dense_layer_is_a_group_and_kernel_windows_are_none():
  """The digits CNN: 3x3 convs, 2x2 average pooling, a flatten and a dense layer. The last
  conv's channels reach the dense kernel as the innermost factor of its flattened
  (row, column, channel) input axis, through the pooling; no group holds a kernel's window."""
  graphdef, state = nnx.split(models.CNN(1, (4, 6), 8, 3, image_size=8, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  fn = lambda p, x: nnx.merge(graphdef, p)(x)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  s = structure.discover(fn, params, x)
  assert {name: _members(s.groups[name]) for name in s.prunable()} == {
      "hidden:convs/0/kernel": [("convs/0/bias", 0, 1, 1, None), ("convs/0/kernel", 3, 1, 1, None),
                                ("convs/1/kernel", 2, 1, 1, None)],
      "hidden:convs/1/kernel": [("convs/1/bias", 0, 1, 1, None), ("convs/1/kernel", 3, 1, 1, None),
                                ("dense/kernel", 0, 1, 16, None)],
      "hidden:dense/kernel": [("dense/bias", 0, 1, 1, None), ("dense/kernel", 1, 1, 1, None),
                              ("head/kernel", 0, 1, 1, None)]}
  assert {name: s.groups[name].producer for name in s.prunable()} == {
      "hidden:convs/0/kernel": "convs/0/kernel", "hidden:convs/1/kernel": "convs/1/kernel",
      "hidden:dense/kernel": "dense/kernel"}
  windows = [(m.path, m.axis) for g in s.groups.values() for m in groups.members(g.coupled)
             if m.path.startswith("convs/") and m.path.endswith("kernel") and m.axis in (0, 1)]
  assert windows == []
  keep = {name: np.arange(s.groups[name].units) % 2 == 0 for name in s.prunable()}
  small, small_fn = structure.compact_model(fn, params, s, keep, x)
  assert small["dense"]["kernel"].shape == (16 * 3, 4)
  masks = groups.coupled_masks(params, {n: s.groups[n].coupled for n in keep}, keep)
  masked = jax.tree.map(lambda p, m: p * m, params, masks)
  np.testing.assert_allclose(small_fn(small, x), fn(masked, x), atol=1e-5)

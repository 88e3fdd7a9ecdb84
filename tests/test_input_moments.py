"""Kernel inputs captured from the computation equal the inputs the model's own layers see
(recorded by intercepting Linen Dense / DenseGeneral calls and NNX Einsum / Embed.attend calls),
per layer for an ``nn.scan`` stack, and sum over batches; eager equals jit."""

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import structure
from impjax.structure import capture
from impjax import tree_utils
from impjax.models import zoo


def _sq(x, contracted):
  """Sum of x^2 over every axis but the contracted ones, and the rows summed."""
  x = np.asarray(x, np.float64)
  contracted = tuple(a % x.ndim for a in contracted)
  others = tuple(a for a in range(x.ndim) if a not in contracted)
  return (x ** 2).sum(axis=others), int(np.prod([x.shape[a] for a in others]))


def _gram(x, contracted, weight=None):
  """``sum_r w_r x_r x_r^T`` of ``x`` flattened to (rows, the contracted axes in the given
  order), ``w`` the rows' weights (ones when not given)."""
  x = np.asarray(x, np.float64)
  flat = np.moveaxis(x, [a % x.ndim for a in contracted],
                     range(x.ndim - len(contracted), x.ndim)).reshape(
      -1, int(np.prod([x.shape[a] for a in contracted])))
  weight = np.ones(len(flat)) if weight is None else np.asarray(weight, np.float64).ravel()
  return flat.T @ (flat * weight[:, None])


def _linen_reference(member, grams=None, inputs=None, weight=None):
  """``{kernel path: (sq, rows)}`` from the inputs of every Dense / DenseGeneral call (and
  their Gram matrices, rows weighted by ``weight``, into ``grams``) on ``inputs`` (the
  member's own when not given)."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.DenseGeneral)):
      axis = module.axis if isinstance(module, nn.DenseGeneral) else -1
      axis = axis if isinstance(axis, tuple) else (axis,)
      sq, rows = _sq(args[0], axis)
      path = "/".join(module.path) + "/kernel"
      if grams is not None:
        grams[path] = grams.get(path, 0.0) + _gram(args[0], axis, weight)
      old = seen.get(path)
      seen[path] = (sq, rows) if old is None else (old[0] + sq, old[1] + rows)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    member.apply(member.params, *(member.inputs if inputs is None else inputs))
  return seen


@pytest.mark.parametrize("name", ["vit", "lm"])
def test_linen_kernel_inputs_equal_the_layers_own(name):
  member = zoo.build(name)
  m = structure.input_moments(member.apply, member.params, *member.inputs, gram=True)
  grams = {}
  want = _linen_reference(member, grams)
  assert sorted(m.sq) == sorted(want) == sorted(m.gram)
  for path, (sq, rows) in want.items():
    np.testing.assert_allclose(m.sq[path], sq, rtol=1e-5, err_msg=path)
    assert float(m.count[path]) == rows, path
    np.testing.assert_allclose(m.gram[path], grams[path], rtol=1e-4, atol=1e-4, err_msg=path)
    np.testing.assert_allclose(np.diag(m.gram[path]), np.ravel(m.sq[path]), rtol=1e-5)
  # The patch embedding is a convolution: named as not captured, never silently skipped.
  assert m.missing == (("embedding/kernel",) if name == "vit" else ())
  jitted = jax.jit(lambda p, *x: structure.input_moments(member.apply, p, *x))(
      member.params, *member.inputs)
  assert jitted.missing == m.missing and jitted.axes == m.axes


def test_gram_rows_are_the_weighted_rows_padded_to_a_bucket():
  mask = np.zeros((8, 64))
  mask[:, :17] = 1.0  # 136 real rows of 512: 256 kept, the last 120 a zero-weight row
  rows = capture.gram_rows(mask)
  real = np.flatnonzero(mask.ravel())
  assert rows.dtype == np.int32 and rows.shape == (256,)
  np.testing.assert_array_equal(rows[:136], real)
  assert (mask.ravel()[rows[136:]] == 0).all()
  assert capture.gram_rows(np.ones((8, 64))) is None  # nothing to leave out
  assert capture.gram_rows(np.pad(np.ones((8, 57)), ((0, 0), (0, 7)))) is None  # 456 of 512
  assert capture.gram_rows(None) is None
  jax.jit(lambda m: capture.gram_rows(m) is None or pytest.fail("traced mask"))(mask)


def test_a_concrete_token_mask_leaves_its_zero_rows_out_of_the_gram_alone():
  member = zoo.build("lm")
  ids = jnp.tile(member.inputs[0], (72, 1))  # 144 x 12: 1728 rows
  lengths = np.random.default_rng(0).integers(1, ids.shape[1] + 1, ids.shape[0])
  mask = (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.float32)
  mask[0, 0] = 0.5  # a weight, not only 0 / 1
  assert len(capture.gram_rows(mask)) < mask.size
  moments = lambda m: structure.input_moments(member.apply, member.params, ids, gram=True,
                                              token_mask=m)
  compact, traced = moments(mask), jax.jit(moments)(mask)  # traced: every row multiplied
  grams = {}
  _linen_reference(member, grams, (ids,), mask)
  assert sorted(compact.gram) == sorted(grams)
  for path, want in grams.items():
    np.testing.assert_allclose(compact.gram[path], want, rtol=1e-4, atol=1e-3, err_msg=path)
    np.testing.assert_allclose(compact.gram[path], traced.gram[path], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(compact.sq[path], traced.sq[path], rtol=1e-6)
    assert float(compact.count[path]) == float(mask.sum())


def _stacked(looped, depth):
  """The looped ViT's params in the scanned layout (blocks stacked along axis 0)."""
  out = dict(looped)
  blocks = [out.pop(f"encoderblock_{i}") for i in range(depth)]
  out["encoderblock"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return out


def test_a_scanned_stack_gets_one_moment_per_layer():
  looped, scanned = zoo.build("vit"), zoo.build("vit_scan")
  depth = looped.config.depth
  params = dict(looped.params, Transformer=_stacked(looped.params["Transformer"], depth))
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, scanned.params)
  m_loop = structure.input_moments(looped.apply, looped.params, *looped.inputs, gram=True)
  m_scan = structure.input_moments(scanned.apply, params, *looped.inputs, gram=True)
  for path in m_scan.sq:
    if "encoderblock/" not in path:
      np.testing.assert_allclose(m_scan.sq[path], m_loop.sq[path], rtol=1e-5)
      np.testing.assert_allclose(m_scan.gram[path], m_loop.gram[path], rtol=1e-5, atol=1e-5)
      continue
    names = [path.replace("encoderblock/", f"encoderblock_{i}/") for i in range(depth)]
    np.testing.assert_allclose(m_scan.sq[path], np.stack([m_loop.sq[n] for n in names]),
                               rtol=1e-5, err_msg=path)
    np.testing.assert_allclose(m_scan.gram[path], np.stack([m_loop.gram[n] for n in names]),
                               rtol=1e-5, atol=1e-5, err_msg=path)
    assert m_scan.axes[path][0] == 0 and np.shape(m_scan.count[path]) == (depth,)
  w = structure.wanda(params, m_scan)
  q = "Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"
  leaf = tree_utils.leaves_by_path(params)[q]
  norm = np.sqrt(np.asarray(m_scan.sq[q]) / np.asarray(m_scan.count[q])[:, None])
  np.testing.assert_allclose(tree_utils.leaves_by_path(w)[q],
                             np.abs(leaf) * norm[:, :, None, None], rtol=1e-5)


def test_nnx_einsum_and_tied_unembedding_inputs_equal_the_modules_own(monkeypatch):
  member = zoo.build("gemma")
  m = structure.input_moments(member.apply, member.params, *member.inputs)
  seen = {}
  einsum_call, attend = nnx.Einsum.__call__, nnx.Embed.attend

  def add(module, x, contracted):
    path = {id(v): p for p, v in _modules(member.model)}[id(module)]
    key = path + ("/kernel" if isinstance(module, nnx.Einsum) else "/embedding")
    sq, rows = _sq(x, contracted)
    old = seen.get(key)
    seen[key] = (sq, rows) if old is None else (old[0] + sq, old[1] + rows)

  def recording_einsum(self, inputs, *args, **kwargs):
    spec_in, rest = self.einsum_str.split(",")
    spec_kernel, spec_out = rest.split("->")
    add(self, inputs, tuple(i for i, c in enumerate(spec_in)
                            if c in spec_kernel and c not in spec_out))
    return einsum_call(self, inputs, *args, **kwargs)

  def recording_attend(self, query):
    add(self, query, (-1,))
    return attend(self, query)

  monkeypatch.setattr(nnx.Einsum, "__call__", recording_einsum)
  monkeypatch.setattr(nnx.Embed, "attend", recording_attend)
  member.model(*member.inputs)
  assert sorted(m.sq) == sorted(seen) and m.missing == ()
  for path, (sq, rows) in seen.items():
    np.testing.assert_allclose(m.sq[path], sq, rtol=1e-5, err_msg=path)
    assert float(m.count[path]) == rows, path


def _modules(model):
  for path, module in nnx.iter_graph(model):
    if isinstance(module, nnx.Module):
      yield "/".join(map(str, path)), module


def test_moments_sum_over_batches_and_jit_equals_eager():
  member = zoo.build("lm")
  (ids,) = member.inputs
  moments = lambda p, x: structure.input_moments(member.apply, p, x, gram=True)
  whole = moments(member.params, jnp.concatenate([ids, ids[::-1]]))
  halves = [jax.jit(moments)(member.params, x) for x in (ids, ids[::-1])]
  for path in whole.sq:
    np.testing.assert_allclose(halves[0].sq[path] + halves[1].sq[path], whole.sq[path],
                               rtol=1e-5)
    np.testing.assert_allclose(halves[0].gram[path] + halves[1].gram[path], whole.gram[path],
                               rtol=1e-5, atol=1e-5)
    assert float(halves[0].count[path] + halves[1].count[path]) == float(whole.count[path])
  eager = moments(member.params, ids)
  for path in eager.sq:
    np.testing.assert_allclose(eager.sq[path], halves[0].sq[path], rtol=1e-6)

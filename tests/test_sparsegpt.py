"""SparseGPT against a float64 numpy port of the reference ``fasterprune`` loop, and the
layer-sequential driver against a hand-rolled sequence."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import pruning
from impjax.flax import capture
from impjax.models import minilm


def reference(w_flax, h, sparsity=0.0, n=0, m=0, blocksize=4, damp=0.01):
  """Algorithm 1 of the paper one column at a time (torch layout W (out, in)): each column's
  error reaches every later column at once (no lazy batches), and masks are chosen on the
  updated weights every ``blocksize`` columns (every ``m`` for N:M), exact prune counts."""
  h = np.asarray(h, np.float64)
  dead = np.diag(h) == 0  # inputs never seen: weights zeroed, Hessian diagonal set to 1
  w = np.where(dead[None], 0.0, np.array(w_flax, np.float64).T)
  diagonal = np.where(dead, 1.0, np.diag(h))
  h = h - np.diag(np.diag(h)) + np.diag(diagonal + damp * diagonal.mean())
  u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: inv(H) = U^T U
  prune = np.zeros(w.shape, bool)
  for i in range(w.shape[1]):
    if not m and i % blocksize == 0:
      cols = slice(i, i + blocksize)
      score = w[:, cols] ** 2 / np.diag(u)[cols] ** 2
      k = int(np.floor(sparsity * score.size + 0.5))
      chosen = np.zeros(score.size, bool)
      chosen[np.argsort(score.reshape(-1), kind="stable")[:k]] = True
      prune[:, cols] = chosen.reshape(score.shape)
    if m and i % m == 0:
      for r in range(w.shape[0]):
        score = w[r, i:i + m] ** 2 / np.diag(u)[i:i + m] ** 2
        prune[r, i + np.argsort(score, kind="stable")[:m - n]] = True
    err = np.where(prune[:, i], w[:, i], 0.0) / u[i, i]
    w[:, i:] -= np.outer(err, u[i, i:])
    w[prune[:, i], i] = 0.0
  return w.T, ~prune.T


def problem(n_in=8, n_out=6, tokens=64, seed=0):
  """Correlated inputs of unequal scales, so the OBS update has work to do."""
  rng = np.random.default_rng(seed)
  mixing = np.eye(n_in) + 0.5 * rng.standard_normal((n_in, n_in))
  x = rng.standard_normal((tokens, n_in)) @ mixing * np.linspace(0.2, 3.0, n_in)
  w = rng.standard_normal((n_in, n_out))
  return jnp.asarray(w, jnp.float32), jnp.asarray(x.T @ x / tokens, jnp.float32)


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.5), dict(sparsity=0.7), dict(n=2, m=4),
                                    dict(n=1, m=4)])
def test_matches_reference(kwargs):
  w, h = problem()
  ref_w, ref_keep = reference(w, h, **kwargs)
  new_w, keep = pruning.sparsegpt(w, h, blocksize=4, **kwargs)
  np.testing.assert_array_equal(keep, ref_keep)
  np.testing.assert_allclose(new_w, ref_w, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.5), dict(n=2, m=4)])
def test_eager_equals_jit(kwargs):
  """The undecorated function (op by op, scans inside) against the jitted one."""
  w, h = problem(n_in=4)
  new_w, keep = pruning.sparsegpt(w, h, blocksize=4, **kwargs)
  eager_w, eager_keep = pruning.sparsegpt.__wrapped__(w, h, blocksize=4, **kwargs)
  np.testing.assert_array_equal(eager_keep, keep)
  np.testing.assert_allclose(eager_w, new_w, rtol=1e-5, atol=1e-6)


def test_n_of_m_counts_and_exact_zeros():
  w, h = problem(n_in=16)
  new_w, keep = pruning.sparsegpt(w, h, n=2, m=4, blocksize=8)
  np.testing.assert_array_equal(np.asarray(keep).reshape(4, 4, -1).sum(1), 2)
  assert np.all(np.asarray(new_w)[~np.asarray(keep)] == 0)


def test_weight_update_beats_mask_alone_and_dense_is_identity():
  w, h = problem(n_in=16, tokens=200)
  new_w, keep = pruning.sparsegpt(w, h, sparsity=0.5, blocksize=8)
  masked_only = jnp.where(keep, w, 0.0)
  updated = float(pruning.reconstruction_error(w, new_w, h))
  assert updated < 0.95 * float(pruning.reconstruction_error(w, masked_only, h))
  dense_w, dense_keep = pruning.sparsegpt(w, h, sparsity=0.0, blocksize=8)
  assert bool(dense_keep.all())
  np.testing.assert_allclose(dense_w, w, atol=1e-5)


def test_dead_inputs_are_zeroed():
  w, h = problem()
  h = h.at[3, :].set(0.0).at[:, 3].set(0.0)
  new_w, _ = pruning.sparsegpt(w, h, sparsity=0.25, blocksize=4)
  assert np.all(np.asarray(new_w)[3] == 0)
  ref_w, _ = reference(w, h, sparsity=0.25)
  np.testing.assert_allclose(new_w, ref_w, rtol=2e-4, atol=2e-5)


def test_reconstruction_error_formula():
  w, h = problem()
  x = np.random.default_rng(3).standard_normal((50, 8))
  d = np.asarray(w) * 0.1
  expected = np.sum((x @ d) ** 2) / 50
  got = pruning.reconstruction_error(w, w - d, jnp.asarray(x.T @ x / 50))
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  np.testing.assert_allclose(jax.jit(pruning.reconstruction_error)(w, w - d,
                                                                   jnp.asarray(x.T @ x / 50)),
                             got, rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(blocksize=3, sparsity=0.5), "blocksize 3 must divide"),
    (dict(blocksize=4, n=2, m=8), "N:M needs"),
    (dict(blocksize=4, sparsity=1.5), "sparsity must lie in"),
])
def test_bad_input(kwargs, message):
  w, h = problem()
  with pytest.raises(ValueError, match=message):
    pruning.sparsegpt(w, h, **kwargs)


def test_bad_hessian_shape():
  w, _ = problem()
  with pytest.raises(ValueError, match="Hessian"):
    pruning.sparsegpt(w, jnp.eye(5), sparsity=0.5, blocksize=4)


# Layer-sequential pruning of an encoder (impjax.pruning.prune_layerwise).

TINY = minilm.MiniLMConfig(vocab_size=40, hidden_size=8, num_heads=(2, 2), head_dim=4,
                           intermediate_sizes=(16, 8), max_position=8)
LINEARS = ("query", "key", "value", "attention_out", "intermediate", "output")


def tiny_setup():
  model = minilm.MiniLM(TINY, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batches = []
  for lengths in ([8, 3, 5], [2, 8, 6]):
    mask = (np.arange(8)[None] < np.array(lengths)[:, None]).astype(np.int32)
    batches.append({"ids": rng.integers(1, 40, (3, 8)).astype(np.int32) * mask, "mask": mask})
  return model, batches


def sequential_reference(model, batches, method, sparsity):
  """Hand-rolled Wanda/SparseGPT sequence: numpy statistics of real tokens, layer by layer,
  each layer fed by the already-pruned previous layer."""
  model = nnx.clone(model)
  hidden = [(model.embeddings(b["ids"]), b["mask"]) for b in batches]
  for layer in model.layers:
    inputs = {p: [] for p in LINEARS}
    for x, mask in hidden:
      _, acts = capture.intermediates(lambda l: l(x, mask), layer)
      for p in LINEARS:
        inputs[p].append(np.asarray(acts[f"{p}/inputs"], np.float64)[mask.astype(bool)])
    for p in LINEARS:
      x = np.concatenate(inputs[p])
      kernel = np.asarray(getattr(layer, p).kernel[...])
      if method == "wanda":
        score = np.abs(kernel) * np.sqrt((x ** 2).mean(0))[:, None]
        k = int(np.floor(sparsity * kernel.shape[0] + 0.5))
        keep = np.ones(kernel.shape, bool)
        for j in range(kernel.shape[1]):
          keep[np.argsort(score[:, j], kind="stable")[:k], j] = False
        new = np.where(keep, kernel, 0.0)
      else:
        new, _ = reference(kernel, x.T @ x / len(x), sparsity=sparsity, blocksize=8)
      getattr(layer, p).kernel[...] = jnp.asarray(new, jnp.float32)
    hidden = [(layer(x, mask), mask) for x, mask in hidden]
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.slow  # over ~10 s
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_layerwise_matches_sequential_reference(method):
  model, batches = tiny_setup()
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  pruned, masks = pruning.prune_layerwise(model, batches, method, sparsity=0.5, blocksize=8,
                                          progress=False)
  expected = sequential_reference(model, batches, method, 0.5)
  got = nnx.to_pure_dict(nnx.state(pruned, nnx.Param))
  for i in range(2):
    for p in LINEARS:
      np.testing.assert_allclose(got["layers"][i][p]["kernel"], expected["layers"][i][p]["kernel"],
                                 rtol=2e-4, atol=2e-5, err_msg=f"layers/{i}/{p}")
      assert float(masks[f"layers/{i}/{p}/kernel"].mean()) == 0.5
  jax.tree.map(np.testing.assert_array_equal, before,
               nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # the input model is unchanged


def test_layerwise_n_of_m_and_magnitude_counts():
  model, batches = tiny_setup()
  _, masks = pruning.prune_layerwise(model, batches, "wanda", n_of_m=(2, 4), progress=False)
  for path, keep in masks.items():
    groups = np.asarray(keep).reshape(-1, 4, keep.shape[1]).sum(1)
    np.testing.assert_array_equal(groups, 2, err_msg=path)
  pruned, masks = pruning.prune_layerwise(model, batches, "magnitude", sparsity=0.25,
                                          progress=False)
  kernel = np.asarray(model.layers[1].intermediate.kernel[...])
  k = int(round(0.25 * kernel.size))
  threshold = np.sort(np.abs(kernel).reshape(-1))[k - 1]
  np.testing.assert_array_equal(masks["layers/1/intermediate/kernel"], np.abs(kernel) > threshold)
  assert np.all(np.asarray(pruned.layers[1].intermediate.kernel[...])[
      ~np.asarray(masks["layers/1/intermediate/kernel"])] == 0)


def test_layerwise_bad_input():
  model, batches = tiny_setup()
  with pytest.raises(ValueError, match="Unknown layer-wise pruning method"):
    pruning.prune_layerwise(model, batches, "obd", sparsity=0.5, progress=False)
  with pytest.raises(ValueError, match="sparsity must lie in"):
    pruning.prune_layerwise(model, batches, "wanda", sparsity=1.5, progress=False)

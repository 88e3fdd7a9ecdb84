"""Activation and gate scores against numpy loops and the papers' formulas, eager and jitted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import pruning
from impjax import scores
from impjax.scores import activations
from tests.helpers import eager_and_jit

TOL = dict(rtol=1e-6, atol=1e-7)  # eager against jitted


@pytest.fixture
def acts():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
  return a, mask


def test_token_sums_and_means(acts):
  a, mask = acts
  got = eager_and_jit(lambda a, m: scores.means(scores.token_sums(a, m)), a, mask, **TOL)
  rows = [a[b, t] for b in range(3) for t in range(5) if mask[b, t]]
  rows = np.array(rows, np.float64)
  np.testing.assert_allclose(got["abs"], np.abs(rows).mean(0), rtol=1e-5)
  np.testing.assert_allclose(got["sq"], (rows ** 2).mean(0), rtol=1e-5)
  np.testing.assert_allclose(got["nonpos"], (rows <= 0).mean(0), rtol=1e-6)


def test_token_gram(acts):
  a, mask = acts
  got = eager_and_jit(scores.token_gram, a, mask, **TOL)
  expected = np.zeros((4, 4))
  for b in range(3):
    for t in range(5):
      if mask[b, t]:
        expected += np.outer(a[b, t], a[b, t])
  np.testing.assert_allclose(got["gram"], expected, rtol=1e-5, atol=1e-6)
  assert float(got["count"]) == mask.sum()


@pytest.mark.parametrize("columns", [3, 384, 701])
def test_symmetric_product_is_the_weighted_gram_in_blocks(columns):
  """Blocks on and above the diagonal, the rest mirrored: ``x^T W x`` of a float64 loop, for
  one block, equal blocks and uneven ones."""
  rng = np.random.default_rng(columns)
  x = rng.standard_normal((37, columns)).astype(np.float32)
  w = rng.uniform(0.0, 2.0, (37, 1)).astype(np.float32)
  got = eager_and_jit(activations.symmetric_product, w * x, x, rtol=1e-6, atol=1e-5)
  expected = sum(w[r, 0] * np.outer(x[r], x[r]) for r in range(37))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_block_influence(acts):
  a, mask = acts
  b_out = a + np.random.default_rng(1).standard_normal(a.shape).astype(np.float32)
  got = eager_and_jit(lambda x, y, m: scores.means(scores.block_influence_sums(x, y, m)),
                      a, b_out, mask, **TOL)
  values = [1 - a[i, t] @ b_out[i, t] / np.linalg.norm(a[i, t]) / np.linalg.norm(b_out[i, t])
            for i in range(3) for t in range(5) if mask[i, t]]
  np.testing.assert_allclose(got["influence"], np.mean(values), rtol=1e-5)


def test_mask_shape_is_checked(acts):
  a, _ = acts
  with pytest.raises(ValueError, match="mask shape"):
    scores.token_sums(a, np.ones((3, 4)))


def test_means_needs_counts():
  with pytest.raises(ValueError, match="count"):
    scores.means({"sq": jnp.ones(2)})


def test_wanda_formula_and_errors():
  rng = np.random.default_rng(2)
  w = rng.standard_normal((6, 3)).astype(np.float32)
  norms = rng.random(6).astype(np.float32)
  got = eager_and_jit(scores.wanda, {"d": {"kernel": w}}, {"d": {"kernel": norms}}, **TOL)
  expected = np.array([[abs(w[i, j]) * norms[i] for j in range(3)] for i in range(6)])
  np.testing.assert_allclose(got["d"]["kernel"], expected, rtol=1e-6)
  with pytest.raises(ValueError, match="d/kernel"):
    scores.wanda({"d": {"kernel": w}}, {"d": {"kernel": norms[:3]}})


def test_wina_formula_and_errors():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 5, 6)).astype(np.float32)
  w = rng.standard_normal((6, 3)).astype(np.float32)
  got = eager_and_jit(scores.wina, x, w, **TOL)
  expected = np.abs(x) * np.array([np.sqrt(np.sum(w[i] ** 2)) for i in range(6)])
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="wina"):
    scores.wina(x, w.T)


def test_attention_received():
  rng = np.random.default_rng(4)
  logits = rng.standard_normal((2, 3, 4, 4))
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  logits = np.where(mask[:, None, None, :] > 0, logits, -np.inf)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  got = eager_and_jit(scores.attention_received, probs.astype(np.float32), mask, **TOL)
  expected = np.zeros((2, 4))
  for b in range(2):
    queries = [q for q in range(4) if mask[b, q]]
    for k in range(4):
      if mask[b, k]:
        expected[b, k] = np.mean([probs[b, h, q, k] for h in range(3) for q in queries])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="queries"):
    scores.attention_received(probs[0], mask[0])


def test_gate_taylor_is_sum_over_tokens_of_activation_times_gradient():
  rng = np.random.default_rng(5)
  h = jnp.asarray(rng.standard_normal((3, 7, 4)), jnp.float32)  # (batch, tokens, units)
  target = jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)
  loss_of_h = lambda h: jnp.sum((h.sum(-1) - target) ** 2 * jnp.arange(1.0, 8.0))
  loss_of_gates = lambda g: loss_of_h(h * g["units"][:, None, :])
  got = eager_and_jit(lambda g: scores.gate_taylor(loss_of_gates, g), {"units": jnp.ones((3, 4))},
                      **TOL)
  grad_h = jax.grad(loss_of_h)(h)
  expected = np.mean(np.abs(np.sum(np.asarray(h) * np.asarray(grad_h), axis=1)), axis=0)
  np.testing.assert_allclose(got["units"], expected, rtol=1e-5)


def test_entropy_loss_formula():
  z = np.random.default_rng(6).standard_normal((5, 3))
  got = eager_and_jit(scores.entropy_loss, jnp.asarray(z, jnp.float32), **TOL)
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  logits = 15 * zn @ zn.T
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(got, np.mean(-np.sum(p * np.log(p), axis=1)), rtol=1e-5)


def test_entropy_taylor_matches_finite_differences():
  rng = np.random.default_rng(7)
  x = rng.standard_normal((4, 3))
  w = rng.standard_normal((3, 2))
  embed = lambda g: (x * g["u"]) @ w
  with jax.enable_x64(True):
    gates = {"u": jnp.ones((4, 3), jnp.float64)}
    got = scores.entropy_taylor(embed, gates)["u"]
    loss = jax.jit(lambda g: scores.entropy_loss(embed({"u": g})))
    eps = 1e-6
    fd = np.zeros((4, 3))
    for b in range(4):
      for u in range(3):
        fd[b, u] = (loss(gates["u"].at[b, u].add(eps))
                    - loss(gates["u"].at[b, u].add(-eps))) / (2 * eps)
  np.testing.assert_allclose(got, np.abs(fd).mean(0), rtol=1e-5)


def test_ria_against_its_formula_eager_and_jit():
  rng = np.random.default_rng(7)
  k = rng.standard_normal((6, 4)).astype(np.float32)
  norms = np.abs(rng.standard_normal(6)).astype(np.float32)
  a = np.abs(k.astype(np.float64))
  # By hand, in the paper's (out, in) layout: W = k.T, row sums over inputs, column sums over
  # outputs, times ||X_j||^0.5.
  w = a.T
  want = (w / w.sum(1, keepdims=True) + w / w.sum(0, keepdims=True)) * np.sqrt(norms)[None, :]
  for fn in (scores.ria, jax.jit(scores.ria)):
    np.testing.assert_allclose(fn({"k": k}, {"k": norms})["k"], want.T, rtol=1e-5)
  kernel, keep = pruning.prune_kernel("ria", jnp.asarray(k), {"sq": jnp.asarray(norms ** 2)},
                                         sparsity=0.5)
  score = want.T
  for j in range(4):  # every output keeps its 3 best inputs by RIA
    assert set(np.flatnonzero(np.asarray(keep)[:, j])) == set(np.argsort(-score[:, j])[:3])
  assert (np.asarray(kernel)[~np.asarray(keep)] == 0).all()

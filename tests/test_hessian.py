"""Tests for impjax.scores.hessian: Hutchinson probes against an explicit Hessian, HAWQ's formula
against numpy, eager and jitted."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import groups
from impjax import scores
from tests.helpers import eager_and_jit

RNG = np.random.default_rng(0)
A = RNG.standard_normal((6, 6)).astype(np.float32)
A = A @ A.T  # a dense symmetric Hessian coupling the two leaves below


def quadratic(params):
  """``0.5 v^T A v`` with ``v = concat(a.ravel(), b)``: its Hessian is ``A``."""
  v = jnp.concatenate([params["a"].reshape(-1), params["b"]])
  return 0.5 * v @ jnp.asarray(A) @ v


PARAMS = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}


def flat(tree):
  return np.concatenate([np.asarray(tree["a"]).reshape(-1), np.asarray(tree["b"])])


def test_rademacher_like_values_shapes_and_independence():
  z = scores.rademacher_like(jax.random.key(0), {"x": jnp.zeros((50, 40)), "y": jnp.zeros((50, 40))})
  again = scores.rademacher_like(jax.random.key(0), {"x": jnp.zeros((50, 40)), "y": jnp.zeros((50, 40))})
  chex.assert_trees_all_equal(z, again)
  for leaf in jax.tree.leaves(z):
    assert leaf.dtype == jnp.float32 and set(np.unique(leaf).tolist()) == {-1.0, 1.0}
    assert abs(float(leaf.mean())) < 0.1
  assert np.mean(np.asarray(z["x"]) == np.asarray(z["y"])) < 0.6


def test_hvp_matches_matrix_vector_product():
  v = {"a": jnp.asarray(RNG.standard_normal((2, 2)), jnp.float32),
       "b": jnp.asarray(RNG.standard_normal(2), jnp.float32)}
  for fn in (scores.hvp, jax.jit(scores.hvp, static_argnums=0)):
    np.testing.assert_allclose(flat(fn(quadratic, PARAMS, v)), A @ flat(v), rtol=1e-5, atol=1e-5)


def test_hutchinson_probe_is_z_times_hz_with_documented_keys():
  key = jax.random.key(3)
  keys = jax.random.split(key, 4)
  probes = [flat(scores.rademacher_like(k, PARAMS)) for k in keys]
  want = np.mean([z * (A @ z) for z in probes], axis=0)
  eager = eager_and_jit(lambda p, k: scores.hutchinson(quadratic, p, k, num_probes=4), PARAMS, key,
                        rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flat(eager), want, rtol=1e-5, atol=1e-4)


def test_hutchinson_is_unbiased_for_the_diagonal():
  n = 4000
  est = jax.jit(lambda k: scores.hutchinson(quadratic, PARAMS, k, num_probes=n))(
      jax.random.key(7))
  off = A - np.diag(np.diag(A))
  sd = np.sqrt(np.sum(off ** 2, axis=1) / n)  # std of the mean of z_i (A z)_i
  assert np.all(np.abs(flat(est) - np.diag(A)) < 5 * sd + 1e-4)


def test_hutchinson_on_a_network_against_its_exact_hessian():
  rng = np.random.default_rng(1)
  params = {"w1": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
            "w2": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)

  def loss(p, batch):
    return jnp.sum(jnp.tanh(batch @ p["w1"]) @ p["w2"] ** 2)

  vec, unravel = jax.flatten_util.ravel_pytree(params)
  hessian = np.asarray(jax.jit(jax.hessian(lambda v: loss(unravel(v), x)))(vec))
  key = jax.random.key(0)
  z, _ = jax.flatten_util.ravel_pytree(scores.rademacher_like(jax.random.split(key, 1)[0], params))
  got, _ = jax.flatten_util.ravel_pytree(jax.jit(scores.hutchinson, static_argnums=0)(
      loss, params, key, x))
  np.testing.assert_allclose(np.asarray(got), np.asarray(z) * (hessian @ np.asarray(z)),
                             rtol=1e-4, atol=1e-4)


def np_hawq(h, errs, axis):
  """Per unit along ``axis`` (None: whole leaf): max(trace, 0) / n * sum of squared errors."""
  if axis is None:
    return np.array([[max(h.sum(), 0) / h.size * e.sum() for e in errs]])
  hm, em = np.moveaxis(h, axis, 0), [np.moveaxis(e, axis, 0) for e in errs]
  rows = []
  for u in range(hm.shape[0]):
    rows.append([max(hm[u].sum(), 0) / hm[u].size * e[u].sum() for e in em])
  return np.array(rows)


@pytest.mark.parametrize("unit", [groups.leaf(), groups.neurons(-1), groups.neurons(0)],
                         ids=["leaf", "out", "in"])
def test_hawq_matches_formula(unit):
  rng = np.random.default_rng(2)
  h = {"k": rng.standard_normal((5, 3)).astype(np.float32), "bias": np.ones(3, np.float32)}
  errs = [{"k": rng.random((5, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)}
          for _ in range(3)]
  plan = groups.plan(h, [("k", unit)])
  fn = lambda hd, es: scores.hawq(hd, es, plan)
  eager = eager_and_jit(fn, h, errs, rtol=1e-6)
  axis = None if unit.kind == "leaf" else unit.axis
  np.testing.assert_allclose(eager["k"], np_hawq(h["k"], [e["k"] for e in errs], axis),
                             rtol=1e-5)
  assert eager["bias"].shape == (0, 3)
  assert (eager["k"] >= 0).all()  # negative unit traces (noise) are clamped at zero


def test_hawq_errors():
  h = {"k": jnp.ones((2, 2))}
  plan = groups.plan(h, [("k", groups.leaf())])
  with pytest.raises(ValueError, match="at least one"):
    scores.hawq(h, [], plan)
  with pytest.raises(ValueError, match=r"missing in sq_errors\[0\]: \['k'\]"):
    scores.hawq(h, [{"j": jnp.ones((2, 2))}], plan)
  with pytest.raises(ValueError, match=r"non-finite.*\['k'\]"):
    scores.hawq({"k": jnp.full((2, 2), jnp.nan)}, [h], plan)
  with pytest.raises(ValueError, match="num_probes"):
    scores.hutchinson(quadratic, PARAMS, jax.random.key(0), num_probes=0)

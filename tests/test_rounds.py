"""Pruning in rounds: plain one-shot at one round, re-scoring between cuts, exact counts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import impjax as ij
from tests.helpers import random_tree


def _params():
  params = random_tree(0, {"a": {"kernel": (12, 6)}, "b": {"kernel": (6, 4)}})
  params["a"]["bias"] = jnp.zeros(6)
  return params


def _coupled_importance(p):
  """|w| scaled by the surviving mass of the other layer: scores change as others are cut."""
  mass_a = jnp.sum(jnp.abs(p["a"]["kernel"]))
  mass_b = jnp.sum(jnp.abs(p["b"]["kernel"]))
  return {"a": {"kernel": jnp.abs(p["a"]["kernel"]) * mass_b, "bias": jnp.abs(p["a"]["bias"])},
          "b": {"kernel": jnp.abs(p["b"]["kernel"]) * mass_a}}


def test_one_round_is_one_shot():
  params = _params()
  plan = ij.groups.plan(params)
  got = ij.pruning.prune_in_rounds(params, plan, 0.6, _coupled_importance, rounds=1)
  chex.assert_trees_all_equal(got, ij.select.masks(_coupled_importance(params), plan, 0.6))


def test_rounds_rescore_the_pruned_model_like_a_numpy_loop():
  params = _params()
  plan = ij.groups.plan(params)
  rounds, final = 4, 0.8
  got = ij.pruning.prune_in_rounds(params, plan, final, _coupled_importance, rounds=rounds)

  a, b = np.asarray(params["a"]["kernel"]), np.asarray(params["b"]["kernel"])
  keep_a, keep_b = np.ones_like(a, bool), np.ones_like(b, bool)
  n = a.size + b.size
  for r in range(1, rounds + 1):
    wa, wb = np.where(keep_a, a, 0), np.where(keep_b, b, 0)
    sa, sb = np.abs(wa) * np.abs(wb).sum(), np.abs(wb) * np.abs(wa).sum()
    scores = np.concatenate([np.where(keep_a, sa, -np.inf).ravel(),
                             np.where(keep_b, sb, -np.inf).ravel()])
    k = int(np.floor(np.float32(1 - (1 - final) ** (r / rounds)) * n + 0.5))
    prune = np.argsort(scores, kind="stable")[:k]
    flat = np.ones(n, bool)
    flat[prune] = False
    keep_a, keep_b = flat[:a.size].reshape(a.shape), flat[a.size:].reshape(b.shape)
  np.testing.assert_array_equal(got["a"]["kernel"], keep_a)
  np.testing.assert_array_equal(got["b"]["kernel"], keep_b)
  assert (~keep_a).sum() + (~keep_b).sum() == int(np.floor(final * n + 0.5))
  assert np.ndim(got["a"]["bias"]) == 0


def test_rounds_differ_from_one_shot_when_scores_are_coupled():
  params = _params()
  plan = ij.groups.plan(params)
  one = ij.pruning.prune_in_rounds(params, plan, 0.8, _coupled_importance, rounds=1)
  many = ij.pruning.prune_in_rounds(params, plan, 0.8, _coupled_importance, rounds=4)
  assert any(bool(jnp.any(x != y)) for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(many)))

"""DSnoT against a per-output loop of the published procedure: which weights swap, that every
output keeps its count, and that no output's expected reconstruction error grows or flips."""

import numpy as np
import pytest

from impjax import pruning
from impjax import select
from impjax import scores


def reference(w, keep, mean, var, sq, max_cycles, threshold):
  """One output at a time: lists of candidates, two ends each, a swap per cycle."""
  w, keep = np.asarray(w, np.float64), np.asarray(keep).copy()
  mean, var, sq = (np.asarray(v, np.float64) for v in (mean, var, sq))
  for o in range(w.shape[1]):
    c = w[:, o] * mean
    wanda = np.abs(w[:, o]) * np.sqrt(sq)
    pruned = [j for j in range(len(c)) if not keep[j, o]]
    kept = [j for j in range(len(c)) if keep[j, o]]
    regrow = sorted(pruned, key=lambda j: (c[j] / var[j], j))
    prune = (sorted([j for j in kept if c[j] < 0], key=lambda j: (wanda[j], j))
             + sorted([j for j in kept if c[j] >= 0], key=lambda j: (-wanda[j], -j)))
    error = sum(c[j] for j in pruned)
    sign = np.sign(error)
    r_lo, r_hi, p_lo, p_hi = 0, len(regrow) - 1, 0, len(prune) - 1
    for _ in range(max_cycles):
      if r_lo > r_hi or p_lo > p_hi or abs(error) <= threshold:
        break
      if error > 0:
        g, r_hi = regrow[r_hi], r_hi - 1
      else:
        g, r_lo = regrow[r_lo], r_lo + 1
      if error < 0:
        p, p_hi = prune[p_hi], p_hi - 1
      else:
        p, p_lo = prune[p_lo], p_lo + 1
      after = error + c[p] - c[g]
      if np.sign(after) != sign:
        break
      keep[g, o], keep[p, o], error = True, False, after
  return keep


def problem(n_in=24, n_out=7, sparsity=0.5, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((n_in, n_out)).astype(np.float32)
  x = (rng.standard_normal((256, n_in)) * rng.uniform(0.2, 2.0, n_in)
       + rng.standard_normal(n_in)).astype(np.float32)  # inputs with nonzero means
  mean, sq = x.mean(0), np.square(x).mean(0)
  var = sq - np.square(mean)
  importance = scores.wanda(w, np.sqrt(sq))
  keep = select.n_of_m_leaf(importance, n_in - select.num_to_prune(sparsity, n_in), n_in, 0)
  return w, np.asarray(keep), mean, var, sq


def expected_errors(w, keep, mean):
  return np.sum(np.where(keep, 0.0, np.asarray(w, np.float64) * mean[:, None]), axis=0)


@pytest.mark.parametrize("sparsity,max_cycles,threshold", [(0.5, 50, 0.1), (0.7, 50, 0.1),
                                                           (0.5, 3, 0.0), (0.7, 50, 1.0)])
def test_matches_the_per_output_loop(sparsity, max_cycles, threshold):
  w, keep, mean, var, sq = problem(sparsity=sparsity)
  got = np.asarray(pruning.dsnot(w, keep, mean=mean, var=var, sq=sq, max_cycles=max_cycles,
                                 threshold=threshold))
  want = reference(w, keep, mean, var, sq, max_cycles, threshold)
  np.testing.assert_array_equal(got, want)
  assert (got != keep).any()  # swaps happened
  np.testing.assert_array_equal(got.sum(0), keep.sum(0))  # every output keeps its count
  before, after = expected_errors(w, keep, mean), expected_errors(w, got, mean)
  assert (np.abs(after) <= np.abs(before) + 1e-6).all()
  assert (np.sign(after) == np.sign(before)).all()


def test_eager_equals_jit():
  w, keep, mean, var, sq = problem(n_in=12, n_out=3)
  jitted = pruning.dsnot(w, keep, mean=mean, var=var, sq=sq, max_cycles=10)
  eager = pruning.dsnot.__wrapped__(w, keep, mean=mean, var=var, sq=sq, max_cycles=10)
  np.testing.assert_array_equal(eager, jitted)

"""Tests for impjax.schedules: one-shot, polynomial (Zhu & Gupta) and iterative schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import schedules

STEPS = np.arange(-3, 260)


def evaluate(schedule, steps=STEPS):
  """(sparsity, is_update_step) at every step, jitted over a vector of steps; also checks a
  few steps eagerly with Python ints against the jitted values (sparsities to 1 ulp: XLA may
  fuse ``final + (initial - final) * x`` into a fused multiply-add under jit)."""
  both = jax.jit(jax.vmap(lambda t: (schedule.sparsity(t), schedule.is_update_step(t))))
  sparsity, update = map(np.asarray, both(jnp.asarray(steps)))
  assert sparsity.dtype == np.float32 and update.dtype == np.bool_
  for i in range(0, len(steps), 37):
    np.testing.assert_allclose(schedule.sparsity(int(steps[i])), sparsity[i], rtol=2e-7)
    assert bool(schedule.is_update_step(int(steps[i]))) == update[i]
  return sparsity, update


@pytest.mark.parametrize("target,step", [(0.5, 0), (0.8, 17), (1.0, 3), (0.0, 5)])
def test_one_shot(target, step):
  sparsity, update = evaluate(schedules.one_shot(target, step=step))
  np.testing.assert_allclose(sparsity, np.where(STEPS >= step, target, 0.0), rtol=1e-7)
  np.testing.assert_array_equal(update, STEPS == step)
  assert schedules.one_shot(target, step).final == target


def zhu_gupta(t, initial, final, begin, end, power=3):
  """s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 on [t0, t0 + n dt], s_f after."""
  if t < begin:
    return 0.0
  if t >= end:
    return final
  return final + (initial - final) * (1.0 - (t - begin) / (end - begin)) ** power


@pytest.mark.parametrize("initial,final,begin,end,frequency,power", [
    (0.0, 0.9, 0, 100, 10, 3),
    (0.0, 0.8, 20, 200, 25, 3),   # end_step off the update grid
    (0.1, 0.95, 7, 250, 1, 3),
    (0.2, 0.6, 50, 150, 100, 2),
])
def test_polynomial(initial, final, begin, end, frequency, power):
  sched = schedules.polynomial(initial, final, begin, end, frequency=frequency, power=power)
  sparsity, update = evaluate(sched)
  want = np.array([zhu_gupta(t, initial, final, begin, end, power) for t in STEPS])
  np.testing.assert_allclose(sparsity, want, rtol=1e-6, atol=1e-7)
  grid = {begin + k * frequency for k in range((end - begin) // frequency + 1)} | {end}
  np.testing.assert_array_equal(update, [t in grid for t in STEPS])
  assert sched.final == final
  assert sparsity[STEPS == end][0] == np.float32(final)
  # Monotone non-decreasing from begin_step on.
  assert np.all(np.diff(sparsity[STEPS >= begin]) >= -1e-7)


def test_polynomial_docstring_value():
  sched = schedules.polynomial(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
  np.testing.assert_allclose(float(sched.sparsity(50)), 0.9 * (1 - 0.5**3), rtol=1e-6)


def test_polynomial_begin_equals_end_prunes_at_that_step():
  sched = schedules.polynomial(0.0, 0.8, 100, 100, frequency=10)
  sparsity, update = evaluate(sched)
  np.testing.assert_allclose(sparsity, np.where(STEPS >= 100, 0.8, 0.0), rtol=1e-7)
  np.testing.assert_array_equal(update, STEPS == 100)


@pytest.mark.parametrize("final,rounds,begin,frequency", [
    (0.75, 2, 0, 10), (0.9, 5, 13, 40), (0.5, 1, 3, 7), (0.99, 8, 0, 25)])
def test_iterative(final, rounds, begin, frequency):
  sparsity, update = evaluate(schedules.iterative(final, rounds, begin, frequency))
  want, updates = [], []
  for t in STEPS:
    done = 0 if t < begin else min((t - begin) // frequency + 1, rounds)
    want.append(1.0 - (1.0 - final) ** (done / rounds))
    updates.append(t >= begin and (t - begin) % frequency == 0 and
                   (t - begin) // frequency < rounds)
  np.testing.assert_allclose(sparsity, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(update, updates)
  # Each round keeps the same fraction of what the previous round kept.
  kept = 1.0 - np.array(sorted(set(np.round(np.asarray(want), 6))))
  np.testing.assert_allclose(kept[1:] / kept[:-1], (1 - final) ** (1 / rounds), rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: schedules.one_shot(1.5),
    lambda: schedules.one_shot(-0.1),
    lambda: schedules.one_shot(0.5, step=-1),
    lambda: schedules.polynomial(0.0, 1.2, 0, 10),
    lambda: schedules.polynomial(-0.1, 0.5, 0, 10),
    lambda: schedules.polynomial(0.0, 0.5, -1, 10),
    lambda: schedules.polynomial(0.0, 0.5, 10, 5),
    lambda: schedules.polynomial(0.0, 0.5, 0, 10, frequency=0),
    lambda: schedules.iterative(0.5, rounds=0, begin_step=0, frequency=10),
    lambda: schedules.iterative(1.5, rounds=2, begin_step=0, frequency=10),
    lambda: schedules.iterative(0.5, rounds=2, begin_step=-5, frequency=10),
    lambda: schedules.iterative(0.5, rounds=2, begin_step=0, frequency=0),
])
def test_invalid_arguments_raise(make):
  with pytest.raises(ValueError):
    make()

"""Layer samplers for fine-tuning: which layers of a stack train now (LISA, IST).

A :class:`LayerSampler` is an optax-style pair: ``init(key)`` returns a state whose ``idx``
lists the active layers (a fixed number, so shapes never change), and
``update(state, evaluate)`` advances it one step, possibly choosing new layers.
``evaluate(keep)`` returns the loss of the current model with the layers where ``keep`` is
``False`` skipped; IST uses it to estimate layer importance, LISA ignores it. The rng is
threaded explicitly through the state (``key``), like ``optax.add_noise``.

* **LISA**: every ``period`` (K = 20) steps, ``gamma`` (2) layers uniformly at random.
* **IST**: a score ``s_l`` per layer, 0 at first (high = safe to suppress). Every ``period``
  steps the active layers are drawn without replacement with weights ``sigmoid(-s)``. Every
  ``every`` (10) steps, ``trials`` (3) forward passes each damp (skip) a uniformly sampled
  ``damped`` fraction (half) of the layers; with rewards ``r_k = exp(-loss_k)`` centred over the
  trials, ``s_l += step_size * sum_k r_k [l damped in k] * sigmoid(s_l) * (1 - sigmoid(s_l))``.
  Damping means skipping the layer here (IST damps a layer's PEFT module).

References: Pan et al. 2024, "LISA: Layerwise Importance Sampling for Memory-Efficient Large
Language Model Fine-Tuning"; Yao et al. 2024, "Layer-wise Importance Matters: Less Memory for
Better Performance in Parameter-efficient Fine-tuning of Large Language Models" (IST).

Example:
  >>> import jax
  >>> from impjax import transforms
  >>> sampler = transforms.lisa(num_layers=8, gamma=2, period=20)
  >>> state = sampler.init(jax.random.key(0))
  >>> state.idx.shape
  (2,)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Evaluate = Callable[[jax.Array], jax.Array]


class LayerSampler(NamedTuple):
  """``init(key) -> state`` (with ``state.idx``) and ``update(state, evaluate) -> state``;
  ``num_layers`` is the stack size it samples from (``None``: not declared)."""
  init: Callable[[jax.Array], Any]
  update: Callable[[Any, Evaluate | None], Any]
  num_layers: int | None = None


class LisaState(NamedTuple):
  """State of :func:`lisa`: steps taken (int32), active layers (int32), rng key."""
  count: jax.Array
  idx: jax.Array
  key: jax.Array


class IstState(NamedTuple):
  """State of :func:`ist`: steps, active layers, rng key and the per-layer scores (float32)."""
  count: jax.Array
  idx: jax.Array
  key: jax.Array
  scores: jax.Array


def _check(num_layers: int, count: int, what: str) -> None:
  if not 1 <= count <= num_layers:
    raise ValueError(f"{what} must lie in [1, num_layers={num_layers}], got {count}.")


def sample_layers(key: jax.Array, num_layers: int, count: int,
                  weights: jax.Array | None = None) -> jax.Array:
  """``count`` distinct layers, ascending, drawn with probability proportional to ``weights``
  (uniform when ``None``), without replacement (int32).

  Example:
    >>> sample_layers(jax.random.key(0), 4, 2, jnp.array([0.0, 1.0, 0.0, 1.0])).tolist()
    [1, 3]
  """
  _check(num_layers, count, "count")
  p = None if weights is None else weights / jnp.sum(weights)
  return jnp.sort(jax.random.choice(key, num_layers, (count,), replace=False, p=p)
                  ).astype(jnp.int32)


def lisa(num_layers: int, gamma: int = 2, period: int = 20) -> LayerSampler:
  """LISA: ``gamma`` layers uniformly at random, resampled every ``period`` steps.

  Example:
    >>> s = lisa(4, gamma=1, period=2)
    >>> state = s.init(jax.random.key(0))
    >>> [int((state := s.update(state, None)).count) for _ in range(3)]
    [1, 2, 3]
  """
  _check(num_layers, gamma, "gamma")
  if period < 1:
    raise ValueError(f"period must be >= 1, got {period}.")

  def init(key):
    key, sub = jax.random.split(key)
    return LisaState(jnp.zeros((), jnp.int32), sample_layers(sub, num_layers, gamma), key)

  def update(state, evaluate=None):
    del evaluate
    count = state.count + 1
    key, sub = jax.random.split(state.key)
    idx = jnp.where(count % period == 0, sample_layers(sub, num_layers, gamma), state.idx)
    return LisaState(count, idx, key)

  return LayerSampler(init, update, num_layers)


def ist_scores(scores: jax.Array, damped: jax.Array, losses: jax.Array,
               step_size: float = 10.0) -> jax.Array:
  """IST's score update from trials: ``damped`` (trials, layers) bool, ``losses`` (trials,).

  ``s_l + step_size * sum_k r_k [l in damped_k] sigmoid(s_l) (1 - sigmoid(s_l))`` with
  ``r_k = exp(-loss_k)`` minus its mean over the trials.

  Example:
    >>> damped = jnp.array([[True, False], [False, True]])
    >>> ist_scores(jnp.zeros(2), damped, jnp.log(jnp.array([1.0, 2.0]))).tolist()
    [0.625, -0.625]
  """
  rewards = jnp.exp(-losses.astype(jnp.float32))
  rewards = rewards - jnp.mean(rewards)
  sig = jax.nn.sigmoid(scores)
  return scores + step_size * (rewards @ damped.astype(jnp.float32)) * sig * (1.0 - sig)


def ist(num_layers: int, fraction: float = 0.25, *, period: int = 1, every: int = 10,
        trials: int = 3, damped: float = 0.5, step_size: float = 10.0) -> LayerSampler:
  """IST: layers sampled by ``sigmoid(-s)``, scores learned from damping trials.

  Args:
    num_layers: layers in the stack.
    fraction: fraction of layers active at a time (at least one).
    period: steps between resampling the active layers (IST: 1).
    every: steps between score updates (IST: 10).
    trials: damping trials per score update (IST: 3).
    damped: fraction of layers skipped in a trial (IST: half).
    step_size: score learning rate (IST: 10).

  Example:
    >>> s = ist(8)
    >>> state = s.init(jax.random.key(0))
    >>> state = s.update(state, lambda keep: jnp.sum(keep).astype(jnp.float32))
    >>> state.idx.shape, state.scores.tolist() == [0.0] * 8
    ((2,), True)
  """
  active = max(1, round(fraction * num_layers))
  n_damped = max(1, round(damped * num_layers))
  _check(num_layers, active, "active layers")
  _check(num_layers, n_damped, "damped layers")
  if min(period, every, trials) < 1:
    raise ValueError(f"period, every and trials must be >= 1, got {period}, {every}, {trials}.")

  def init(key):
    key, sub = jax.random.split(key)
    return IstState(jnp.zeros((), jnp.int32), sample_layers(sub, num_layers, active), key,
                    jnp.zeros((num_layers,), jnp.float32))

  def update(state, evaluate):
    count = state.count + 1
    key, k_trials, k_sample = jax.random.split(state.key, 3)

    def estimate():
      masks = []
      for k in jax.random.split(k_trials, trials):
        chosen = sample_layers(k, num_layers, n_damped)
        masks.append(jnp.zeros((num_layers,), jnp.bool_).at[chosen].set(True))
      masks = jnp.stack(masks)
      losses = jnp.stack([evaluate(jnp.logical_not(m)) for m in masks])
      return ist_scores(state.scores, masks, losses, step_size)

    scores = lax.cond(count % every == 0, estimate, lambda: state.scores)
    resampled = sample_layers(k_sample, num_layers, active, jax.nn.sigmoid(-scores))
    idx = jnp.where(count % period == 0, resampled, state.idx)
    return IstState(count, idx, key, scores)

  return LayerSampler(init, update, num_layers)

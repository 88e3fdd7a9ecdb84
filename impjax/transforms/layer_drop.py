"""LayerDrop with importance-weighted probabilities, and choosing layers to keep afterwards.

In training, each layer of a stack is skipped with its own probability (all layers run at
evaluation); a network trained so stays good when whole layers are later removed
(:func:`impjax.slicing.slice_depth`). Probabilities come from any per-layer importance
(:func:`impjax.transforms.layer_stack.layer_scores`): ranked by importance, layer ``l`` with rank ``r_l``
(0 = most important) of ``L`` is dropped with ``p_l = rate * (1 + strength * (2 r_l / (L - 1)
- 1))`` — the mean stays ``rate``; ``strength = 0`` is plain LayerDrop, ``strength = 1`` drops
the least important layer with ``2 * rate`` and never the most important one.

References: Fan et al. 2020, "Reducing Transformer Depth on Demand with Structured Dropout"
(fairseq LayerDrop: p = 0.2, 0.5 for aggressive pruning; "every other" layer kept after);
Huang et al. 2016, "Deep Networks with Stochastic Depth" (probabilities that vary by layer).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax.transforms.layer_drop import layer_drop_probs
  >>> layer_drop_probs(jnp.array([5.0, 1.0, 3.0]), rate=0.2, strength=1.0).tolist()
  [0.0, 0.4000000059604645, 0.20000000298023224]
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from impjax import select
from impjax import tree_utils
from impjax.transforms import layer_stack


def layer_drop_probs(layer_importance: jax.Array, rate: float, strength: float = 0.0) -> jax.Array:
  """Drop probability of every layer: mean ``rate``, spread by importance rank (float32).

  Args:
    layer_importance: one score per layer, higher = more important.
    rate: mean drop probability.
    strength: in [0, 1]; 0 gives every layer ``rate``.

  Example:
    >>> layer_drop_probs(jnp.array([1.0, 2.0]), rate=0.5).tolist()
    [0.5, 0.5]
  """
  tree_utils.check_fraction(rate, what="rate")
  tree_utils.check_fraction(strength, what="strength")
  if rate * (1.0 + strength) > 1.0:
    raise ValueError(f"rate * (1 + strength) must be <= 1 so every probability is valid, got "
                     f"rate={rate}, strength={strength}.")
  n = np.shape(layer_importance)[0]
  ranks = select.unit_ranks({"layers": jnp.asarray(layer_importance)})["layers"]
  spread = 2.0 * ranks.astype(jnp.float32) / max(n - 1, 1) - 1.0  # in [-1, 1]; 0 if n == 1
  spread = spread if n > 1 else jnp.zeros((1,), jnp.float32)
  return (rate * (1.0 + strength * spread)).astype(jnp.float32)


def layer_drop_keep(key: jax.Array, probs: jax.Array) -> jax.Array:
  """Which layers run this step: layer ``l`` is kept with probability ``1 - probs[l]``.

  Example:
    >>> layer_drop_keep(jax.random.key(0), jnp.array([0.0, 1.0, 0.0])).tolist()
    [True, False, True]
  """
  tree_utils.check_fraction(probs, what="layer drop probabilities")
  return jax.random.bernoulli(key, 1.0 - jnp.asarray(probs, jnp.float32))


def layer_drop(loss_fn: Callable[..., Any], block_fn: layer_stack.BlockFn, *,
               layers: str = "blocks") -> Callable[..., Any]:
  """Wraps ``loss_fn(params, *args, run=..., **kwargs)`` to train with LayerDrop.

  The wrapped function is ``(params, key, probs, *args, **kwargs)``: it draws which layers of
  the stack at path ``layers`` run (:func:`layer_drop_keep`) and passes ``loss_fn`` a ``run``
  that skips the others (:func:`impjax.transforms.run_layers`). ``probs`` is an argument, so it
  may be recomputed from importance during training without recompiling. At evaluation call
  ``loss_fn`` with every layer run.

  Example:
    >>> params = {"blocks": {"w": jnp.array([2.0, 3.0])}}
    >>> loss = lambda p, x, run: run(x)
    >>> wrapped = layer_drop(loss, lambda p, h: h * p["w"])
    >>> float(wrapped(params, jax.random.key(0), jnp.array([1.0, 0.0]), jnp.float32(1.0)))
    3.0
  """
  def wrapped(params, key, probs, *args, **kwargs):
    stack = tree_utils.get_path(params, layers)
    depth = layer_stack.num_layers(stack)
    if np.shape(probs) != (depth,):
      raise ValueError(f"probs has shape {np.shape(probs)}, but the stack at '{layers}' has "
                       f"{depth} layers.")
    keep = layer_drop_keep(key, probs)
    run = functools.partial(layer_stack.run_layers, block_fn, stack, keep=keep)
    return loss_fn(params, *args, run=run, **kwargs)
  return wrapped


def every_other(num_layers: int) -> np.ndarray:
  """LayerDrop's pruning rule: keep layers 0, 2, 4, ...

  Example:
    >>> every_other(5).tolist()
    [0, 2, 4]
  """
  return np.arange(0, num_layers, 2)


def most_important(layer_importance: jax.Array, n: int) -> np.ndarray:
  """Indices (ascending) of the ``n`` most important layers (ties: the later layer kept).

  Example:
    >>> most_important(jnp.array([0.3, 0.1, 0.9, 0.5]), 2).tolist()
    [2, 3]
  """
  total = np.shape(layer_importance)[0]
  if not 0 <= n <= total:
    raise ValueError(f"Cannot keep {n} of {total} layers.")
  tree_utils.check_finite(layer_importance, what="layer importance")
  keep = select.prune_lowest([jnp.asarray(layer_importance)], total - n)[0]
  return np.flatnonzero(np.asarray(keep))

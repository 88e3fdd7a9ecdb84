"""A stack of same-shaped layers: gather, scatter, score, and run them — skipping or training
only some — under ``jit`` with dynamic (traced) layer indices, so nothing recompiles.

A *stack* is a pytree whose leaves share a leading layer axis (Flax's scan-over-layers layout,
e.g. ``params["blocks"]`` of :class:`impjax.models.ResidualMLP`); :func:`stack_layers` builds
one from a list of same-shaped layers (the pure dict of an ``nnx.List``, e.g. MiniLM's
``params["layers"]``) and :func:`unstack_layers` gives the list back. ``block_fn(layer, h) -> h``
applies one layer (unstacked leaves); ``h`` may be any pytree that keeps its structure, e.g.
``(hidden, attention_mask)`` for a transformer layer. Models take ``run(h)`` to replace their
pass through the stack, so a transform decides how the stack is run.

:func:`run_sampled` is what makes layer-sampled fine-tuning cheap: each layer is a
``lax.cond`` between a trainable branch (its parameters read from the small ``active`` stack)
and a frozen branch (read from the constant full stack). Autodiff transposes the ``cond`` into a
``cond``, so at run time a frozen layer computes only the activation gradient ``dL/dh`` and no
weight gradient, and the gradient tree holds only the active layers.

Reference: Fan et al. 2020, "Reducing Transformer Depth on Demand with Structured Dropout"
(skipping layers); Pan et al. 2024, "LISA: Layerwise Importance Sampling for Memory-Efficient
Large Language Model Fine-Tuning" (training a few sampled layers).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import transforms
  >>> layers = {"w": jnp.array([2.0, 3.0, 5.0])}
  >>> block = lambda p, h: h * p["w"]
  >>> float(transforms.run_layers(block, layers, jnp.float32(1.0)))
  30.0
  >>> float(transforms.run_layers(block, layers, jnp.float32(1.0), keep=jnp.array([1, 0, 1]) > 0))
  10.0
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import groups
from impjax import tree_utils

BlockFn = Callable[[Any, Any], Any]  # (layer params, h) -> h; h an array or any pytree


def num_layers(layers: Any) -> int:
  """Size of the shared leading axis; ``ValueError`` naming a leaf that disagrees.

  Example:
    >>> num_layers({"a": jnp.ones((3, 2)), "b": jnp.ones(3)})
    3
  """
  sizes = [(path, np.shape(x)[0] if np.ndim(x) else None)
           for path, x in zip(tree_utils.path_names(layers), jax.tree.leaves(layers))]
  if not sizes:
    raise ValueError("The layer stack has no leaves.")
  first_path, first = sizes[0]
  for path, n in sizes:
    if n is None or n != first:
      raise ValueError(f"Stacked layer leaves need one leading layer axis: leaf '{path}' has "
                       f"{'no axis' if n is None else f'{n} layers'}, but leaf '{first_path}' "
                       f"has {first}.")
  return first


def stack_layers(layers: Any) -> Any:
  """One stack from per-layer trees: a list/tuple, or a dict keyed ``0 .. n-1`` (the pure dict
  of an ``nnx.List``, e.g. ``params["layers"]`` of :class:`impjax.models.minilm.MiniLM`).

  Every layer must have the same structure and leaf shapes (``ValueError`` naming the leaf).

  Example:
    >>> stack = stack_layers({0: {"w": jnp.ones(2)}, 1: {"w": jnp.zeros(2)}})
    >>> stack["w"].shape
    (2, 2)
  """
  if isinstance(layers, dict):
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"A dict of layers needs the keys 0..{len(layers) - 1}, got "
                       f"{sorted(layers, key=str)}.")
    layers = [layers[i] for i in range(len(layers))]
  if not isinstance(layers, (list, tuple)) or not layers:
    raise ValueError(f"Expected a non-empty list or dict of layers, got {type(layers)}.")
  for i, layer in enumerate(layers[1:], 1):
    tree_utils.check_same_structure(layers[0], layer, names=("layer 0", f"layer {i}"))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


def unstack_layers(layers: Any) -> dict[int, Any]:
  """The inverse of :func:`stack_layers`: ``{i: layer i}`` (the pure-dict layout of an
  ``nnx.List``).

  Example:
    >>> unstack_layers({"w": jnp.array([[1.0], [2.0]])})[1]["w"].tolist()
    [2.0]
  """
  return {i: _layer(layers, i) for i in range(num_layers(layers))}


def gather(layers: Any, idx: jax.Array) -> Any:
  """The layers at ``idx`` (a new, smaller stack).

  Example:
    >>> gather({"w": jnp.array([2.0, 3.0, 5.0])}, jnp.array([2, 0]))["w"].tolist()
    [5.0, 2.0]
  """
  return jax.tree.map(lambda a: a[idx], layers)


def scatter(layers: Any, active: Any, idx: jax.Array) -> Any:
  """``layers`` with the layers at ``idx`` replaced by ``active`` (the inverse of gather).

  Example:
    >>> scatter({"w": jnp.zeros(3)}, {"w": jnp.array([7.0])}, jnp.array([1]))["w"].tolist()
    [0.0, 7.0, 0.0]
  """
  tree_utils.check_same_structure(layers, active, names=("layers", "active"), shapes=False)
  return jax.tree.map(lambda a, b: a.at[idx].set(b.astype(a.dtype)), layers, active)


def layer_scores(importance: tree_utils.Importance) -> jax.Array:
  """Per-layer importance of a stacked importance tree: the sum of each layer's scores.

  Use ``scores.magnitude(layers, p=2)`` for squared weight norms, ``scores.taylor`` for Taylor.

  Example:
    >>> layer_scores({"a": jnp.ones((2, 3)), "b": jnp.array([1.0, 4.0])}).tolist()
    [4.0, 7.0]
  """
  num_layers(importance)
  per_leaf = [groups.reduce_leaf(s.astype(jnp.float32), groups.neurons(axis=0), "sum")
              for s in jax.tree.leaves(importance)]
  return sum(per_leaf[1:], per_leaf[0])


def _layer(layers: Any, index: int) -> Any:
  return jax.tree.map(lambda a: a[index], layers)


def run_layers(block_fn: BlockFn, layers: Any, h: Any,
               keep: jax.Array | None = None) -> Any:
  """Applies every layer in order; with ``keep`` (bool per layer), a layer whose entry is
  ``False`` is skipped: ``lax.cond`` runs the identity instead, forward and backward, so
  skipped layers cost nothing at run time.

  Without ``keep`` the layers run in a ``lax.scan``. With it the loop is unrolled: a ``cond``
  inside a scan would make XLA stack a copy of every layer's weights as backward residuals.

  Example:
    >>> layers = {"w": jnp.array([2.0, 3.0])}
    >>> float(run_layers(lambda p, h: h + p["w"], layers, jnp.float32(0.0), jnp.array([False, True])))
    3.0
  """
  n = num_layers(layers)
  if keep is None:
    return lax.scan(lambda h, layer: (block_fn(layer, h), None), h, layers)[0]
  if np.shape(keep) != (n,):
    raise ValueError(f"keep must have one entry per layer, shape ({n},), got {np.shape(keep)}.")
  keep = jnp.asarray(keep, jnp.bool_)
  for index in range(n):
    layer = _layer(layers, index)
    h = lax.cond(keep[index], lambda h, layer=layer: block_fn(layer, h), lambda h: h, h)
  return h


def run_sampled(block_fn: BlockFn, active: Any, layers: Any, idx: jax.Array,
                h: Any) -> Any:
  """Runs the full stack where the layers at ``idx`` take their parameters from ``active``.

  ``layers`` is treated as a constant (``stop_gradient``); gradients flow to ``active`` (a
  stack of ``len(idx)`` layers, ``idx`` distinct) and to ``h``. Each layer is a ``lax.cond``,
  so a frozen layer's backward computes ``dL/dh`` only — no weight gradient — and ``idx`` may
  change between calls without recompiling. The loop over layers is unrolled (see
  :func:`run_layers`), so the backward keeps no copies of the weights.

  Example:
    >>> layers, active = {"w": jnp.array([2.0, 3.0, 5.0])}, {"w": jnp.array([10.0])}
    >>> block = lambda p, h: h * p["w"]
    >>> float(run_sampled(block, active, layers, jnp.array([1]), jnp.float32(1.0)))
    100.0
    >>> jax.grad(lambda a: run_sampled(block, a, layers, jnp.array([1]), jnp.float32(1.0)))(active)["w"].tolist()
    [10.0]
  """
  n = num_layers(layers)
  gamma = num_layers(active)
  if np.shape(idx) != (gamma,):
    raise ValueError(f"idx must list the {gamma} active layers, got shape {np.shape(idx)}.")
  frozen = lax.stop_gradient(layers)
  for index in range(n):
    hit = idx == index
    trained = jax.tree.map(lambda a, hit=hit: a[jnp.argmax(hit)], active)
    h = lax.cond(jnp.any(hit), block_fn,
                 lambda _, h, layer=_layer(frozen, index): block_fn(layer, h), trained, h)
  return h

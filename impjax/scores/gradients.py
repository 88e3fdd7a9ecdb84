"""First-order gradient scores: saliency ``|g|``, Taylor ``|w * g|`` and its group form.

References: Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning" (group
Taylor); Lee et al. 2019, "SNIP" (``|w * g|`` at initialization); Sanh et al. 2020,
"Movement Pruning" (``-w * g`` accumulated over training).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import scores
  >>> scores.taylor({"w": jnp.array([2.0, -1.0])}, {"w": jnp.array([0.5, 3.0])})["w"].tolist()
  [1.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from impjax import tree_utils


def _check_pair(params: tree_utils.Params, grads: tree_utils.Grads) -> None:
  tree_utils.check_same_structure(params, grads, names=("params", "grads"))


def saliency(grads: tree_utils.Grads) -> tree_utils.Importance:
  """``|g|`` for every leaf.

  Example:
    >>> saliency({"w": jnp.array([-2.0])})["w"].tolist()
    [2.0]
  """
  return jax.tree.map(jnp.abs, grads)


def taylor(params: tree_utils.Params, grads: tree_utils.Grads) -> tree_utils.Importance:
  """First-order Taylor importance ``|w * g|`` (the loss change from zeroing one weight).

  Example:
    >>> taylor({"w": jnp.array([-2.0])}, {"w": jnp.array([3.0])})["w"].tolist()
    [6.0]
  """
  _check_pair(params, grads)
  return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def taylor_group(params: tree_utils.Params, grads: tree_utils.Grads, axis: int = -1) -> Any:
  """Group Taylor ``|sum_{unit} w * g|`` per unit along ``axis`` (Molchanov et al. 2019).

  Each leaf becomes a vector with one score per index of ``axis`` (an output neuron of a
  Flax kernel for ``axis=-1``); scalar leaves give their own ``|w * g|``. A leaf without that
  axis raises a ``ValueError`` naming it.

  Example:
    >>> w = jnp.array([[1.0, 2.0], [3.0, -4.0]]); g = jnp.ones((2, 2))
    >>> taylor_group({"k": w}, {"k": g})["k"].tolist()
    [4.0, 2.0]
  """
  _check_pair(params, grads)

  def leaf(path, w, g):
    prod = w * g
    if prod.ndim == 0:
      return jnp.abs(prod)
    if not -prod.ndim <= axis < prod.ndim:
      raise ValueError(f"taylor_group: leaf '{path}' of shape {prod.shape} has no axis {axis}.")
    ax = axis % prod.ndim
    others = tuple(i for i in range(prod.ndim) if i != ax)
    return jnp.abs(jnp.sum(prod, axis=others))
  return tree_utils.map_with_path(leaf, params, grads)


def movement(params: tree_utils.Params, grads: tree_utils.Grads) -> tree_utils.Importance:
  """One step of movement importance ``-w * g``; sum it over training with ``estimators.sum``.

  High scores mark weights moving away from zero (Sanh et al. 2020).

  Example:
    >>> movement({"w": jnp.array([2.0])}, {"w": jnp.array([-1.0])})["w"].tolist()
    [2.0]
  """
  _check_pair(params, grads)
  return jax.tree.map(lambda w, g: -w * g, params, grads)

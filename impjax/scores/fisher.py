"""Second-order scores: the empirical Fisher diagonal and Optimal Brain Damage.

References: LeCun et al. 1990, "Optimal Brain Damage" (``0.5 * w^2 * H_ii``, here the Fisher
diagonal stands in for ``H_ii``); Theis et al. 2018, "Faster gaze prediction with dense
networks and Fisher pruning".

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import scores
  >>> f = scores.fisher({"w": jnp.array([2.0])})
  >>> scores.obd({"w": jnp.array([3.0])}, f)["w"].tolist()
  [18.0]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from impjax import tree_utils


def fisher(grads: tree_utils.Grads) -> tree_utils.Importance:
  """``g^2`` of a gradient; averaged over steps by an estimator it estimates ``E[g^2]``.

  Example:
    >>> fisher({"w": jnp.array([-3.0])})["w"].tolist()
    [9.0]
  """
  return jax.tree.map(jnp.square, grads)


def per_sample_grads(loss_fn: Callable, params: tree_utils.Params, batch: Any) -> Any:
  """Gradients of ``loss_fn(params, example)`` for every example of ``batch`` (via ``vmap``).

  ``batch`` is a pytree whose leaves share a leading batch axis; each example is passed to
  ``loss_fn`` with a batch axis of size 1 so ordinary batched model code works unchanged.

  Example:
    >>> loss = lambda p, ex: jnp.sum(p["w"] * ex["x"])
    >>> g = per_sample_grads(loss, {"w": jnp.ones(2)}, {"x": jnp.eye(2)})
    >>> g["w"].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  def one(example):
    example = jax.tree.map(lambda x: x[None], example)
    return jax.grad(loss_fn)(params, example)
  return jax.vmap(one)(batch)


def fisher_per_sample(loss_fn: Callable, params: tree_utils.Params,
                      batch: Any) -> tree_utils.Importance:
  """Empirical Fisher diagonal ``mean_i g_i^2`` from per-example gradients.

  Example:
    >>> loss = lambda p, ex: jnp.sum(p["w"] * ex["x"])
    >>> fisher_per_sample(loss, {"w": jnp.ones(2)}, {"x": jnp.array([[1.0, 2.0], [3.0, 0.0]])})["w"].tolist()
    [5.0, 2.0]
  """
  grads = per_sample_grads(loss_fn, params, batch)
  return jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), grads)


def obd(params: tree_utils.Params, fisher_diag: Any) -> tree_utils.Importance:
  """Optimal Brain Damage saliency ``0.5 * w^2 * F`` with ``F`` a Fisher/Hessian diagonal.

  Example:
    >>> obd({"w": jnp.array([2.0])}, {"w": jnp.array([0.5])})["w"].tolist()
    [1.0]
  """
  tree_utils.check_same_structure(params, fisher_diag, names=("params", "fisher_diag"))
  return jax.tree.map(lambda w, f: 0.5 * jnp.square(w) * f, params, fisher_diag)

"""Hessian diagonal by Hutchinson's estimator, and HAWQ's quantization sensitivity.

``hutchinson`` estimates ``diag(H) = E[z * (H z)]`` with Rademacher probes ``z``; each probe
costs one Hessian-vector product (forward-over-reverse: ``jvp`` of ``grad``) and gives every
leaf at once, so summing a leaf's estimate gives its trace (``E[z_l . (H z)_l] = Tr(H_ll)``).
Average it over calibration batches with :func:`impjax.estimators.calibrate`.

``hawq`` turns a Hessian diagonal and the squared quantization errors of each candidate
precision into HAWQ-V2's sensitivity ``Omega_u(b) = (Tr(H_u) / n_u) * ||Q_b(W_u) - W_u||^2``
for every unit ``u`` of a plan (a whole leaf, or each channel).

References: Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix";
Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted Quantization"; Yao et al. 2021,
"HAWQ-V3" (integer linear programming over these sensitivities).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import scores
  >>> loss = lambda p, x: 0.5 * jnp.sum(x * p["w"] ** 2)   # Hessian diag(x)
  >>> d = scores.hutchinson(loss, {"w": jnp.ones(3)}, jax.random.key(0), jnp.array([1.0, 2.0, 3.0]))
  >>> d["w"].tolist()
  [1.0, 2.0, 3.0]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from impjax import groups
from impjax import tree_utils


def rademacher_like(key: jax.Array, tree: Any) -> Any:
  """Independent ``+-1`` float32 probes shaped like every leaf of ``tree``.

  Example:
    >>> z = rademacher_like(jax.random.key(0), {"a": jnp.zeros(1000)})
    >>> sorted(set(z["a"].tolist()))
    [-1.0, 1.0]
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  probes = [jax.random.rademacher(k, jnp.shape(x), jnp.float32) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, probes)


def hvp(loss_fn: Callable, params: tree_utils.Params, vector: Any, *args) -> Any:
  """Hessian-vector product ``H v`` of ``loss_fn(params, *args)`` (``jvp`` of ``grad``).

  Example:
    >>> loss = lambda p: jnp.sum(p["w"] ** 3)            # H = diag(6 w)
    >>> hvp(loss, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 1.0])})["w"].tolist()
    [6.0, 12.0]
  """
  return jax.jvp(lambda p: jax.grad(loss_fn)(p, *args), (params,), (vector,))[1]


def hutchinson(loss_fn: Callable, params: tree_utils.Params, key: jax.Array, *args,
               num_probes: int = 1) -> Any:
  """Hutchinson estimate of the Hessian diagonal: the mean of ``z * (H z)`` over probes.

  Args:
    loss_fn: ``(params, *args) -> scalar``.
    params: the point where the Hessian is taken.
    key: PRNG key of the probes (probe ``i`` uses ``split(key, num_probes)[i]``).
    *args: further arguments of ``loss_fn`` (e.g. a batch).
    num_probes: Rademacher probes averaged (static).

  Returns:
    A float32 tree like ``params``; its leaf sums estimate the per-leaf Hessian traces.

  Example:
    >>> loss = lambda p: jnp.sum(p["w"] ** 4)            # H = diag(12 w^2)
    >>> hutchinson(loss, {"w": jnp.array([1.0, 0.5])}, jax.random.key(1),
    ...            num_probes=4)["w"].tolist()
    [12.0, 3.0]
  """
  if num_probes < 1:
    raise ValueError(f"num_probes must be a positive integer, got {num_probes}.")

  def one(k):
    z = rademacher_like(k, params)
    hz = hvp(loss_fn, params, z, *args)
    return jax.tree.map(lambda a, b: (a * b).astype(jnp.float32), z, hz)
  estimates = jax.vmap(one)(jax.random.split(key, num_probes))
  return jax.tree.map(lambda e: jnp.mean(e, axis=0), estimates)


def hawq(hessian_diag: Any, sq_errors: Sequence[Any], the_plan: tree_utils.Plan) -> Any:
  """HAWQ-V2 sensitivity ``(Tr(H_u) / n_u) * ||Q_b(W_u) - W_u||^2`` per unit and choice.

  Unit traces are clamped at zero: at a minimum the Hessian is positive semi-definite, so a
  negative estimate (Hutchinson noise on a small unit) must not make low precision look
  beneficial. Any PSD curvature diagonal works as well, e.g. the empirical Fisher
  (:func:`impjax.scores.fisher_per_sample`), as Optimal Brain Damage uses it.

  Args:
    hessian_diag: Hessian diagonal like the params (e.g. from :func:`hutchinson`).
    sq_errors: one tree per candidate precision ``b``: ``(Q_b(W) - W)^2`` like the params
      (see :func:`impjax.quantization.squared_errors`).
    the_plan: units per leaf from :func:`impjax.groups.plan` (``leaf()`` for per-layer,
      ``neurons(axis)`` for per-channel; dense leaves have no units).

  Returns:
    A tree like the params whose leaves are float32 ``(num_units, num_choices)`` tables.

  Example:
    >>> from impjax import groups
    >>> p = {"k": jnp.ones((2, 2))}
    >>> plan = groups.plan(p, [("k", groups.neurons(-1))])
    >>> h = {"k": jnp.array([[1.0, 2.0], [3.0, 2.0]])}
    >>> errs = [{"k": jnp.full((2, 2), 0.5)}, {"k": jnp.full((2, 2), 0.1)}]
    >>> hawq(h, errs, plan)["k"].tolist()
    [[2.0, 0.4000000059604645], [2.0, 0.4000000059604645]]
  """
  if not sq_errors:
    raise ValueError("hawq needs the squared errors of at least one choice.")
  tree_utils.check_same_structure(the_plan, hessian_diag, names=("plan", "hessian_diag"),
                                  shapes=False)
  for i, err in enumerate(sq_errors):
    tree_utils.check_same_structure(hessian_diag, err, names=("hessian_diag",
                                                              f"sq_errors[{i}]"))
  tree_utils.check_finite(hessian_diag, what="hessian_diag")

  def leaf(g, h, *errs):
    traces = jnp.maximum(groups.reduce_leaf(h.astype(jnp.float32), g, "sum"), 0.0)
    if traces.size == 0:
      return jnp.zeros((0, len(errs)), jnp.float32)
    per_unit = math.prod(np.shape(h)) // traces.size
    norms = jnp.stack([groups.reduce_leaf(e.astype(jnp.float32), g, "sum") for e in errs], -1)
    return traces[:, None] / per_unit * norms
  return jax.tree.map(leaf, the_plan, hessian_diag, *sq_errors)

"""Quantization errors of candidate precisions, and sensitivity tables built from them.

``squared_errors`` gives ``(Q_b(W) - W)^2`` for every candidate ``b`` (integer bits under a
:class:`impjax.quantization.Scheme`, or a float format); ``hawq_table`` combines them with a
Hessian diagonal, ``output_error_table`` with the second moment of each kernel's inputs, into
the ``(units, choices)`` tables that :func:`impjax.select.allocate` consumes.

References: Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted Quantization"; Frantar
et al. 2023, "GPTQ" and Nagel et al. 2020, "Up or Down? Adaptive Rounding" (the layer-output
error ``E||x^T (Q(W) - W)||^2`` as the quantity to minimize).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, quantization
  >>> p = {"kernel": jnp.array([[1.5, -0.5], [0.1, 0.7]])}
  >>> plan = groups.plan(p, [("kernel", groups.leaf())])
  >>> h = {"kernel": jnp.ones((2, 2))}
  >>> t = quantization.hawq_table(p, h, (3, 8), plan)["kernel"]
  >>> t.shape, bool(t[0, 0] > t[0, 1])
  ((1, 2), True)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from impjax import groups
from impjax import scores
from impjax.quantization import numerics
from impjax import tree_utils


def _approx(w: jax.Array, choice: int | str, scheme: numerics.Scheme) -> jax.Array:
  """``Q_b(w)`` in float32: a float-format cast or integer fake quantization."""
  w = w.astype(jnp.float32)
  return (numerics.cast(w, choice) if numerics.is_format(choice)
          else numerics.fake_quant_array(w, choice, scheme))


def squared_errors(params: tree_utils.Params, choices: Sequence[int | str],
                   the_plan: tree_utils.Plan,
                   scheme: Any = numerics.Scheme()) -> list[Any]:
  """``(Q_b(W) - W)^2`` per candidate ``b``, for every planned leaf (zeros for dense leaves).

  Args:
    params: the weights.
    choices: candidate precisions: integer bits or float format names.
    the_plan: :func:`impjax.groups.plan` (dense leaves are not quantized).
    scheme: the integer quantization scheme, or a tree of them.

  Returns:
    One float32 tree like ``params`` per choice.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import groups
    >>> p = {"w": jnp.array([1.5, -0.5, 0.1])}
    >>> e = squared_errors(p, (3,), groups.plan(p, [("w", groups.leaf())]))
    >>> [round(v, 6) for v in e[0]["w"].tolist()]
    [0.0, 0.0, 0.01]
  """
  tree_utils.check_same_structure(the_plan, params, names=("plan", "params"), shapes=False)
  schemes = numerics.scheme_tree(params, scheme)
  out = []
  for choice in choices:
    def leaf(g, w, scheme, choice=choice):
      if g.kind == "dense":
        return jnp.zeros(jnp.shape(w), jnp.float32)
      return jnp.square(_approx(w, choice, scheme) - w.astype(jnp.float32))
    out.append(jax.tree.map(leaf, the_plan, params, schemes))
  return out


def hawq_table(params: tree_utils.Params, hessian_diag: Any, choices: Sequence[int | str],
               the_plan: tree_utils.Plan,
               scheme: Any = numerics.Scheme()) -> Any:
  """HAWQ sensitivity tables ``(units, choices)`` per leaf: :func:`impjax.scores.hawq` of the
  :func:`squared_errors` of ``choices``.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import groups
    >>> p = {"w": jnp.array([[1.5], [0.25]])}                # 0.25 rounds to 0 at 3 bits
    >>> plan = groups.plan(p, [("w", groups.leaf())])
    >>> hawq_table(p, {"w": jnp.array([[2.0], [0.0]])}, (3,), plan)["w"].tolist()
    [[0.0625]]
  """
  for choice in choices:
    numerics.check_bits("choices", choice)
  return scores.hawq(hessian_diag, squared_errors(params, choices, the_plan, scheme), the_plan)


def output_error_table(params: tree_utils.Params, input_moments: Any, choices: Sequence[int | str],
                       the_plan: tree_utils.Plan,
                       scheme: Any = numerics.Scheme()) -> Any:
  """Layer-output error of every candidate precision, per unit: ``(units, choices)`` tables.

  For a kernel ``W`` (contraction axes first, outputs last) with ``D = Q_b(W) - W`` and the
  second moment of its inputs ``G = E[x x^T]`` (:func:`impjax.scores.token_gram`, then
  :func:`impjax.scores.means`), the expected squared output error is
  ``E||x^T D||^2 = sum_ij D_ij (G D)_ij``; each unit gets the sum of ``D * (G D)`` over its
  weights, exact for units made of whole output columns (``leaf()``, ``neurons(-1)``). A 1-D
  moment ``E[x^2]`` (:func:`impjax.scores.token_sums`' ``sq``) keeps only the diagonal of
  ``G``: ``sum_ij E[x_i^2] D_ij^2``, the Wanda / PTQ1.61 weighting.

  Args:
    params: the weights.
    input_moments: tree like ``params`` with ``E[x x^T]`` ``(k, k)`` or ``E[x^2]`` ``(k,)``
      per planned kernel (``k`` = product of its leading axes), ``None`` for dense leaves.
    choices: candidate precisions: integer bits or float format names.
    the_plan: :func:`impjax.groups.plan` (dense leaves get ``(0, len(choices))`` tables).
    scheme: the integer quantization scheme, or a tree of them.

  Returns:
    A tree like ``params`` of float32 ``(num_units, len(choices))`` tables.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import groups
    >>> p = {"k": jnp.array([[1.5, 1.0], [0.25, 0.5]]), "b": jnp.zeros(2)}
    >>> plan = groups.plan(p, [("k", groups.neurons(-1))])
    >>> t = output_error_table(p, {"k": jnp.array([1.0, 4.0]), "b": None}, (3, 8), plan)
    >>> t["k"][:, 0].tolist(), t["b"].shape  # 0.25 rounds to 0 at 3 bits: 4 * 0.25^2
    ([0.25, 0.0], (0, 2))
  """
  for choice in choices:
    numerics.check_bits("choices", choice)
  tree_utils.check_same_structure(the_plan, params, names=("plan", "params"), shapes=False)

  def leaf(path, g, w, m, scheme):
    if g.kind == "dense":
      return jnp.zeros((0, len(choices)), jnp.float32)
    rows = math.prod(np.shape(w)[:-1])
    if m is None or np.ndim(w) < 2 or np.shape(m) not in ((rows,), (rows, rows)):
      raise ValueError(f"Leaf '{path}' of shape {np.shape(w)} needs input moments of shape "
                       f"({rows},) or ({rows}, {rows}), got "
                       f"{None if m is None else np.shape(m)}.")
    m = m.astype(jnp.float32)
    cols = []
    for choice in choices:
      d = (_approx(w, choice, scheme) - w.astype(jnp.float32)).reshape(rows, -1)
      weighted = m @ d if m.ndim == 2 else m[:, None] * d
      cols.append(groups.reduce_leaf((d * weighted).reshape(np.shape(w)), g, "sum"))
    return jnp.stack(cols, -1)
  return tree_utils.map_with_path(leaf, the_plan, params, input_moments,
                                  numerics.scheme_tree(params, scheme),
                                  is_leaf=lambda v: isinstance(v, groups.Granularity))

"""Quantization errors of candidate precisions, and HAWQ sensitivity tables built from them.

``squared_errors`` gives ``(Q_b(W) - W)^2`` for every candidate ``b`` (integer bits under a
:class:`impjax.transforms.Scheme`, or a float format); ``hawq_table`` combines them with a
Hessian diagonal into the ``(units, choices)`` tables that :func:`impjax.select.allocate`
consumes.

Reference: Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted Quantization".

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

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from impjax import scores
from impjax import transforms
from impjax import tree_utils


def squared_errors(params: Any, choices: Sequence[int | str], the_plan: Any,
                   scheme: transforms.Scheme = transforms.Scheme()) -> list[Any]:
  """``(Q_b(W) - W)^2`` per candidate ``b``, for every planned leaf (zeros for dense leaves).

  Args:
    params: the weights.
    choices: candidate precisions: integer bits or float format names.
    the_plan: :func:`impjax.groups.plan` (dense leaves are not quantized).
    scheme: the integer quantization scheme.

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
  out = []
  for choice in choices:
    def leaf(g, w, choice=choice):
      if g.kind == "dense":
        return jnp.zeros(jnp.shape(w), jnp.float32)
      w = w.astype(jnp.float32)
      approx = (transforms.cast(w, choice) if transforms.is_format(choice)
                else transforms.fake_quant_array(w, choice, scheme))
      return jnp.square(approx - w)
    out.append(jax.tree.map(leaf, the_plan, params))
  return out


def hawq_table(params: Any, hessian_diag: Any, choices: Sequence[int | str], the_plan: Any,
               scheme: transforms.Scheme = transforms.Scheme()) -> Any:
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
    transforms.check_bits("choices", choice)
  return scores.hawq(hessian_diag, squared_errors(params, choices, the_plan, scheme), the_plan)

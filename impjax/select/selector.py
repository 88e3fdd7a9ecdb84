"""A selector: every option of how importance becomes masks, as one value built once.

:class:`Selector` holds the scope of the budget, the group reduction, the per-leaf normalizer
and the per-leaf allocation; :func:`selector` builds one and refuses options that cannot work
together before any work. Everything that selects masks (:func:`impjax.select.masks`, the
pruning transform, pruning in rounds) takes a selector, so a new selection rule touches
``impjax.select`` only.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, scores, select
  >>> params = {"d": {"kernel": jnp.array([[1.0, -3.0], [2.0, 0.5]])}}
  >>> plan = groups.plan(params, [("kernel", groups.neurons(-1))])
  >>> by_max = select.selector(reduce="max")
  >>> select.masks(scores.magnitude(params), plan, 0.5, by_max)["d"]["kernel"].tolist()
  [[False, True], [False, True]]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from impjax import tree_utils
from impjax.groups.granularity import REDUCTIONS
from impjax.groups.normalize import NORMALIZERS
from impjax.select import allocation as allocation_lib
from impjax.select.topk import Scope

ALLOCATIONS = ("uniform", "erk")


class Selector(NamedTuple):
  """How importance becomes masks (build it with :func:`selector`, which checks it).

  Attributes:
    scope: ``"global"`` (one budget), ``"local"`` (one per leaf) or a callable
      ``path -> scope name``.
    reduce: group reduction of structured granularities (``sum``, ``mean``, ``max``, ``l2``).
    normalizer: per-leaf normalizer of group scores (``none``, ``l2``, ``max``, ``lamp``).
    allocation: ``None`` (the sparsity is the budget of every scope), ``"uniform"`` or
      ``"erk"`` (per-leaf budgets scaled from the final sparsity; needs ``scope="local"``).
    floor: the share of each prunable leaf's groups (elements, neurons, blocks) that is always
      kept, at least one group when positive: a leaf that a budget would cut below it keeps
      its ``ceil(floor * groups)`` best instead, so no global budget empties a layer (the
      pruned count then falls short of the budget by those groups). ``0``: no floor. N:M
      leaves never need one.
  """
  scope: Scope = "global"
  reduce: str = "sum"
  normalizer: str = "none"
  allocation: str | None = None
  floor: float = 0.01

  def budget(self, params: tree_utils.Params, the_plan: tree_utils.Plan, sparsity: Any,
             final: float) -> Any:
    """The sparsity argument of :func:`impjax.select.masks` at ``sparsity`` of a schedule
    ending at ``final``: the scalar itself, or per-leaf fractions under an allocation.

    Example:
      >>> import jax.numpy as jnp
      >>> from impjax import groups
      >>> p = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}
      >>> plan = groups.plan(p, [(".*", groups.element())])
      >>> selector("local", allocation="uniform").budget(p, plan, 0.25, 0.5)
      {'a': 0.25, 'b': 0.25}
    """
    if self.allocation is None:
      return sparsity
    alloc = allocation_lib.erk if self.allocation == "erk" else allocation_lib.uniform
    per_leaf = alloc(params, the_plan, final)
    scale = sparsity / final if final > 0 else 0.0 * sparsity
    return jax.tree.map(lambda s: s * scale, per_leaf)


def selector(scope: Scope = "global", reduce: str = "sum", normalizer: str = "none",
             allocation: str | None = None, floor: float = 0.01) -> Selector:
  """A checked :class:`Selector`; ``ValueError`` naming the field that cannot work.

  Example:
    >>> selector(allocation="erk")
    Traceback (most recent call last):
    ...
    ValueError: Selector allocation='erk' sets per-leaf budgets: use scope='local'.
  """
  if reduce not in REDUCTIONS:
    raise ValueError(f"Selector reduce={reduce!r}: use one of {REDUCTIONS}.")
  if normalizer not in NORMALIZERS:
    raise ValueError(f"Selector normalizer={normalizer!r}: use one of {NORMALIZERS}.")
  if allocation is not None and allocation not in ALLOCATIONS:
    raise ValueError(f"Selector allocation must be None or one of {ALLOCATIONS}, got "
                     f"{allocation!r}.")
  if allocation is not None and scope != "local":
    raise ValueError(f"Selector allocation='{allocation}' sets per-leaf budgets: use "
                     "scope='local'.")
  if not (scope in ("global", "local") or callable(scope)):
    raise ValueError(f"Selector scope must be 'global', 'local' or a callable, got {scope!r}.")
  if not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
    raise ValueError(f"Selector floor must be a number in [0, 1], got {floor!r}.")
  return Selector(scope, reduce, normalizer, allocation, float(floor))

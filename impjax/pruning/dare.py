"""DARE: drop the delta parameters of a fine-tuned model and rescale the rest.

The delta of a leaf is ``d = w_ft - w_pre``. :func:`dare` drops each delta entry with
probability ``rate`` (independent Bernoulli draws) and rescales the kept ones by
``1 / (1 - rate)``, so the expected delta is unchanged; :func:`prune_deltas` instead keeps
exactly the top ``1 - rate`` deltas of each scope by an importance score (``|d|`` by default),
selected by :func:`impjax.select.masks`. Both return ``w_pre + d'``. Path rules say which leaves
are dropped: with the defaults kernels are, and biases, norm scales and embeddings keep their
whole delta; ``rules=[(".*", groups.element())]`` drops every delta, as the paper does.

Reference: Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from
Homologous Models as a Free Lunch" (DARE).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import pruning
  >>> pre = {"d": {"kernel": jnp.zeros((2, 2))}}
  >>> ft = {"d": {"kernel": jnp.array([[1.0, -4.0], [0.5, 2.0]])}}
  >>> pruning.prune_deltas(ft, pre, "magnitude", 0.5, rescale=False)["d"]["kernel"].tolist()
  [[0.0, -4.0], [0.0, 2.0]]
  >>> out = pruning.dare(ft, pre, 0.5, jax.random.key(0))["d"]["kernel"]
  >>> bool(jnp.all((out == 0) | (out == 2 * ft["d"]["kernel"])))
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from impjax import groups
from impjax import scores
from impjax import select
from impjax import tree_utils


def deltas(finetuned: tree_utils.Params, pretrained: tree_utils.Params) -> tree_utils.Params:
  """``w_ft - w_pre`` leaf by leaf, in at least float32; ``ValueError`` naming the leaf path
  where the two trees differ in structure or shape.

  Example:
    >>> deltas({"w": jnp.array([3.0])}, {"w": jnp.array([1.0])})["w"].tolist()
    [2.0]
  """
  tree_utils.check_same_structure(pretrained, finetuned, names=("pretrained", "finetuned"))
  return jax.tree.map(lambda ft, pre: _wide(ft) - _wide(pre), finetuned, pretrained)


def dare(finetuned: tree_utils.Params, pretrained: tree_utils.Params, rate: Any,
         key: jax.Array, *, rescale: bool = True,
         rules: groups.Rules | None = None) -> tree_utils.Params:
  """Drops each delta entry of the planned leaves with probability ``rate`` (DARE).

  Entry ``i`` of a leaf is dropped where ``u_i < rate``, ``u`` the leaf's draws of
  :func:`impjax.scores.random` with ``key`` (uniform in [0, 1), the leaf path folded into the
  key); a dropped entry takes its pretrained value, a kept one ``w_pre + d / (1 - rate)``
  (``w_ft`` itself without ``rescale`` or at ``rate == 0``).

  Args:
    finetuned: the fine-tuned params.
    pretrained: the pretrained params, a tree like ``finetuned``.
    rate: drop probability in [0, 1) (may be traced; a concrete value outside raises).
    key: a ``jax.random`` key.
    rescale: scale the kept deltas by ``1 / (1 - rate)`` (the paper's DARE); ``False`` is
      plain random dropping (DropOnly).
    rules: path rules planning which leaves are dropped (element granularity only); ``None``:
      kernels, the rest keep their whole delta.

  Returns:
    Params like ``finetuned``, in its dtypes.

  Example:
    >>> out = dare({"w": jnp.full(4, 3.0)}, {"w": jnp.ones(4)}, 0.0, jax.random.key(1))
    >>> out["w"].tolist()
    [3.0, 3.0, 3.0, 3.0]
  """
  _check_rate(rate)
  delta = deltas(finetuned, pretrained)
  the_plan = groups.plan(finetuned, rules)
  for path, g in tree_utils.leaves_by_path(the_plan).items():
    if g.kind not in ("dense", "element"):
      raise ValueError(f"dare drops single entries, but leaf '{path}' is planned as {g.kind}; "
                       "use prune_deltas for structured groups.")
  draws = scores.random(key, delta)
  keep = jax.tree.map(lambda u: u >= rate, draws)
  return _merge(finetuned, pretrained, delta, keep, the_plan, rate, rescale)


def prune_deltas(finetuned: tree_utils.Params, pretrained: tree_utils.Params,
                 importance_or_criterion: Any, rate: Any, *, rescale: bool = False,
                 rules: groups.Rules | None = None,
                 selector: select.Selector = select.Selector()) -> tree_utils.Params:
  """Keeps the deltas of highest importance: exactly ``round(rate * N)`` pruned per scope.

  Args:
    finetuned: the fine-tuned params.
    pretrained: the pretrained params, a tree like ``finetuned``.
    importance_or_criterion: a data-free criterion (a registered name such as
      ``"magnitude"`` or ``"random"``, or a :class:`impjax.scores.Criterion`) scored on the
      deltas, or an importance tree like ``finetuned`` (higher = keep).
    rate: fraction of the planned deltas pruned, in [0, 1).
    rescale: scale the kept deltas by ``1 / (1 - rate)`` as DARE does.
    rules: path rules (any granularity: elements, neurons, N:M, ...); ``None``: kernels
      elementwise, the rest keep their whole delta.
    selector: scope, group reduction, normalizer and allocation of the selection
      (:func:`impjax.select.selector`; the default is one global budget).

  Returns:
    Params like ``finetuned``, in its dtypes.

  Example:
    >>> pre, ft = {"w": jnp.zeros(4)}, {"w": jnp.array([1.0, -3.0, 2.0, 0.5])}
    >>> prune_deltas(ft, pre, "magnitude", 0.5, rescale=True,
    ...              rules=[("w", groups.element())])["w"].tolist()
    [0.0, -6.0, 4.0, 0.0]
  """
  _check_rate(rate)
  delta = deltas(finetuned, pretrained)
  the_plan = groups.plan(finetuned, rules)
  importance = _importance(importance_or_criterion, delta)
  keep = select.masks(importance, the_plan, rate, select.selector(*selector))
  return _merge(finetuned, pretrained, delta, keep, the_plan, rate, rescale)


def _importance(importance_or_criterion: Any, delta: tree_utils.Params) -> Any:
  """The importance tree: a criterion's score of the deltas, or the given tree checked."""
  given = importance_or_criterion
  if isinstance(given, (str, scores.Criterion)):
    crit = scores.criterion(given) if isinstance(given, str) else given
    if crit.statistic is not None:
      raise ValueError(f"Criterion '{crit.name}' needs gradient statistics; score the deltas "
                       "yourself and pass the importance tree instead.")
    return crit.importance(delta, None)
  tree_utils.check_same_structure(delta, given, names=("finetuned", "importance"))
  return given


def _merge(finetuned, pretrained, delta, keep, the_plan, rate, rescale):
  """``w_pre + d / (1 - rate)`` where kept (``w_ft`` when nothing is rescaled), ``w_pre``
  where dropped, in the fine-tuned dtypes; dense leaves are ``w_ft``."""
  def leaf(ft, pre, d, k, g):
    if g.kind == "dense":
      return ft
    kept = ft
    if rescale:
      kept = jnp.where(rate > 0, _wide(pre) + d / (1.0 - rate), _wide(ft))
    return jnp.where(k, kept, _wide(pre)).astype(ft.dtype)
  return jax.tree.map(leaf, finetuned, pretrained, delta, keep, the_plan)


def _wide(x: jax.Array) -> jax.Array:
  """``x`` in float32, or wider when it already is."""
  return jnp.asarray(x).astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def _check_rate(rate: Any) -> None:
  """Raises ``ValueError`` unless a concrete ``rate`` lies in [0, 1)."""
  tree_utils.check_fraction(rate, what="DARE rate")
  if tree_utils.is_concrete(rate) and float(rate) >= 1.0:
    raise ValueError(f"DARE rate must be below 1 (1 drops every delta and the rescale "
                     f"1 / (1 - rate) is infinite), got {rate}.")

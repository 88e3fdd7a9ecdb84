"""Path rules: which leaves are prunable, and at what granularity, declared by regex.

Rules are ``(pattern, granularity)`` pairs matched with ``re.search`` against a leaf's path
string (``"dense1/kernel"``); the first match wins, unmatched leaves stay dense. The defaults
prune every ``kernel`` elementwise and keep biases, norm scales and embeddings dense.

A rule whose pattern matches no leaf path is an error naming the rule (a typo in a pattern would
otherwise prune nothing without a word), unless it is wrapped in :func:`optional`, as the
defaults are: a rule that may legitimately find nothing, e.g. one written for several models.
A rule whose leaves all went to earlier rules (a fallback) is not an error.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups
  >>> params = {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}
  >>> plan = groups.plan(params)
  >>> plan["dense"]["kernel"].kind, plan["dense"]["bias"].kind
  ('element', 'dense')
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from impjax import tree_utils
from impjax.groups import granularity as gran

Rules = Sequence[tuple[str, gran.Granularity]]


class OptionalRule(NamedTuple):
  """A path rule that may match no leaf (see :func:`optional`)."""
  pattern: str
  granularity: gran.Granularity


def optional(pattern: str, granularity: gran.Granularity) -> OptionalRule:
  """A rule that is not an error when it matches no leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> plan({"w": jnp.ones(2)}, [optional("head/", gran.DENSE), ("w", gran.element())])["w"].kind
    'element'
  """
  return OptionalRule(pattern, granularity)


DEFAULT_RULES: Rules = (
    optional(r"(^|/)(bias|scale|embedding|embeddings)$", gran.DENSE),
    optional(r"(^|/)kernel$", gran.element()),
)


def _compile(rules: Rules) -> list[tuple[re.Pattern, gran.Granularity]]:
  compiled = []
  for i, rule in enumerate(rules):
    if not (isinstance(rule, tuple) and len(rule) == 2
            and isinstance(rule[1], gran.Granularity)):
      raise ValueError(f"Rule {i} must be a (pattern, granularity) pair, got {rule!r}.")
    try:
      compiled.append((re.compile(rule[0]), rule[1]))
    except (re.error, TypeError) as e:
      raise ValueError(f"Rule {i} pattern {rule[0]!r} is not a valid regex: {e}.") from None
  return compiled


def plan(params: tree_utils.Params, rules: Rules | None = None) -> tree_utils.Plan:
  """A tree like ``params`` whose leaves are each leaf's :class:`Granularity`.

  Raises ``ValueError`` naming the leaf when a granularity does not fit its shape (an N:M
  group size that does not divide the axis, blocks that do not tile, an empty leaf), and
  naming the rule when a rule is malformed, is not a valid regex, or matches no leaf without
  being :func:`optional`.
  """
  rules = tuple(DEFAULT_RULES if rules is None else rules)
  compiled = _compile(rules)
  def leaf(path, x):
    for pattern, g in compiled:
      if pattern.search(path):
        gran.check_leaf(np.shape(x), g, path)
        return g
    return gran.DENSE

  the_plan = tree_utils.map_with_path(leaf, params)
  paths = tree_utils.path_names(params)
  for i, (rule, (pattern, g)) in enumerate(zip(rules, compiled)):
    if not isinstance(rule, OptionalRule) and not any(pattern.search(p) for p in paths):
      raise ValueError(
          f"Rule {i} ({rule[0]!r} -> {g.kind}) matches no leaf; the leaves are "
          f"{paths[:8]}{' ...' if len(paths) > 8 else ''}. Wrap it in "
          "impjax.groups.optional(...) if it may match nothing.")
  return the_plan


def reduce(scores: Any, the_plan: tree_utils.Plan, how: str = "sum") -> Any:
  """Flat group scores per leaf (empty vectors for dense leaves)."""
  tree_utils.check_same_structure(the_plan, scores, names=("plan", "scores"), shapes=False)
  return jax.tree.map(lambda s, g: gran.reduce_leaf(s, g, how), scores, the_plan)


def expand(group_masks: Any, the_plan: tree_utils.Plan,
           params: tree_utils.Params) -> tree_utils.Masks:
  """Element masks broadcastable to ``params`` from flat group masks."""
  return jax.tree.map(lambda m, g, p: gran.expand_leaf(m, g, np.shape(p)),
                      group_masks, the_plan, params)

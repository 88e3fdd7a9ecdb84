"""Path rules: which leaves are prunable, and at what granularity, declared by regex.

Rules are ``(pattern, granularity)`` pairs matched with ``re.search`` against a leaf's path
string (``"dense1/kernel"``); the first match wins, unmatched leaves stay dense. The defaults
prune every ``kernel`` elementwise and keep biases, norm scales and embeddings dense.

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
from typing import Any, Sequence

import jax
import numpy as np

from impjax import tree_utils
from impjax.groups import granularity as gran

Rules = Sequence[tuple[str, gran.Granularity]]

DEFAULT_RULES: Rules = (
    (r"(^|/)(bias|scale|embedding|embeddings)$", gran.DENSE),
    (r"(^|/)kernel$", gran.element()),
)


def plan(params: tree_utils.Params, rules: Rules | None = None) -> tree_utils.Plan:
  """A tree like ``params`` whose leaves are each leaf's :class:`Granularity`.

  Raises ``ValueError`` naming the leaf when a granularity does not fit its shape (an N:M
  group size that does not divide the axis, blocks that do not tile).
  """
  compiled = [(re.compile(p), g) for p, g in (DEFAULT_RULES if rules is None else rules)]

  def leaf(path, x):
    for pattern, g in compiled:
      if pattern.search(path):
        gran.check_leaf(np.shape(x), g, path)
        return g
    return gran.DENSE

  return tree_utils.map_with_path(leaf, params)


def reduce(scores: Any, the_plan: tree_utils.Plan, how: str = "sum") -> Any:
  """Flat group scores per leaf (empty vectors for dense leaves)."""
  tree_utils.check_same_structure(the_plan, scores, names=("plan", "scores"), shapes=False)
  return jax.tree.map(lambda s, g: gran.reduce_leaf(s, g, how), scores, the_plan)


def expand(group_masks: Any, the_plan: tree_utils.Plan,
           params: tree_utils.Params) -> tree_utils.Masks:
  """Element masks broadcastable to ``params`` from flat group masks."""
  return jax.tree.map(lambda m, g, p: gran.expand_leaf(m, g, np.shape(p)),
                      group_masks, the_plan, params)

"""Pytree helpers shared by every stage: the pytree aliases of signatures, readable key
paths, access by path, and early, path-naming checks.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import tree_utils
  >>> tree_utils.path_names({"dense": {"kernel": jnp.ones((2, 2))}})
  ['dense/kernel']
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
"""A model's parameters: a pytree of float arrays (nested dicts, an NNX pure dict, ...)."""
Grads = Any
"""Gradients: a pytree like :data:`Params`."""
Importance = Any
"""Importance scores: a pytree like :data:`Params` (or per-unit leaves), higher = keep."""
Masks = Any
"""Bool keep-masks: a pytree like :data:`Params`, each leaf broadcastable to its param."""
Plan = Any
"""Granularities: a pytree like :data:`Params` of :class:`impjax.groups.Granularity`."""


def path_str(path: tuple) -> str:
  """Joins a jax key path into ``"a/b/0/kernel"`` (NNX's trailing ``.value`` is dropped)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != "value":
        parts.append(key.name)
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def path_names(tree: Any) -> list[str]:
  """The path string of every leaf of ``tree``, in flattening order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def leaves_by_path(tree: Any) -> dict[str, Any]:
  """``{path string: leaf}`` of every leaf of ``tree``, in flattening order.

  Example:
    >>> leaves_by_path({"a": {"b": 1}, "c": 2})
    {'a/b': 1, 'c': 2}
  """
  return dict(zip(path_names(tree), jax.tree.leaves(tree)))


def get_path(tree: Any, path: str) -> Any:
  """The node at ``"a/b/0"``: dict keys (``"0"`` also finds an int key, as in NNX pure
  dicts of ``nnx.List``), sequence indices or attributes (an NNX module's submodules);
  ``ValueError`` naming the path if it is missing.

  Example:
    >>> get_path({"a": {"b": [1, 2]}}, "a/b/1")
    2
  """
  missing = ValueError(f"No subtree '{path}' in the params (top-level keys: "
                       f"{sorted(tree) if isinstance(tree, dict) else type(tree)}).")
  node = tree
  for key in path.split("/"):
    if isinstance(node, dict):
      if key not in node and not (key.isdigit() and int(key) in node):
        raise missing
      node = node[key] if key in node else node[int(key)]
    elif key.isdigit() and hasattr(node, "__getitem__"):
      try:
        node = node[int(key)]
      except (IndexError, KeyError):
        raise missing from None
    elif not key.isdigit() and hasattr(node, key):
      node = getattr(node, key)
    else:
      raise missing
  return node


def set_path(tree: dict, path: str, value: Any) -> dict:
  """A copy of nested dicts ``tree`` with the subtree at ``path`` replaced.

  Example:
    >>> set_path({"a": {"b": 1, "c": 2}}, "a/b", 5)
    {'a': {'b': 5, 'c': 2}}
  """
  get_path(tree, path)
  head, _, rest = path.partition("/")
  return {**tree, head: set_path(tree[head], rest, value) if rest else value}


def map_with_path(fn, tree: Any, *rest: Any, is_leaf=None) -> Any:
  """``jax.tree.map`` where ``fn`` receives the leaf's path string first."""
  return jax.tree_util.tree_map_with_path(
      lambda p, *xs: fn(path_str(p), *xs), tree, *rest, is_leaf=is_leaf)


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values (not a tracer), so value checks can run eagerly."""
  return not isinstance(x, jax.core.Tracer)


def check_same_structure(reference: Any, other: Any, *, names: tuple[str, str],
                         shapes: bool = True) -> None:
  """Raises ``ValueError`` naming the leaf paths where two trees (or, with ``shapes``, leaf
  shapes) differ.
  """
  ref_paths = path_names(reference)
  other_paths = path_names(other)
  if ref_paths == other_paths:
    if not shapes:
      return
    ref_leaves, other_leaves = jax.tree.leaves(reference), jax.tree.leaves(other)
    for path, a, b in zip(ref_paths, ref_leaves, other_leaves):
      if np.shape(a) != np.shape(b):
        raise ValueError(f"{names[1]} leaf '{path}' has shape {np.shape(b)}, "
                         f"but {names[0]} has {np.shape(a)}.")
    return
  missing = [p for p in ref_paths if p not in set(other_paths)]
  extra = [p for p in other_paths if p not in set(ref_paths)]
  detail = []
  if missing:
    detail.append(f"missing in {names[1]}: {missing[:5]}")
  if extra:
    detail.append(f"not in {names[0]}: {extra[:5]}")
  if not detail:
    detail.append("leaves in a different order or container types differ")
  raise ValueError(f"{names[0]} and {names[1]} have different tree structures ("
                   + "; ".join(detail) + ").")


def check_broadcasts(params: Any, masks: Any, *, what: str = "mask") -> None:
  """Raises ``ValueError`` naming the leaf path where a leaf of ``masks`` (a tree like
  ``params``) does not broadcast to its param's shape.

  Example:
    >>> import jax.numpy as jnp
    >>> check_broadcasts({"w": jnp.ones((2, 3))}, {"w": jnp.ones((3, 2), bool)})
    Traceback (most recent call last):
    ...
    ValueError: mask of leaf 'w' has shape (3, 2), which does not broadcast to the leaf's shape (2, 3).
  """
  check_same_structure(params, masks, names=("params", f"{what}s"), shapes=False)
  for path, p, m in zip(path_names(params), jax.tree.leaves(params), jax.tree.leaves(masks)):
    check_broadcasts_leaf(path, np.shape(m), np.shape(p), what=what)


def check_broadcasts_leaf(path: str, shape: tuple[int, ...], leaf_shape: tuple[int, ...], *,
                          what: str = "mask") -> None:
  """Raises ``ValueError`` naming ``path`` unless ``shape`` broadcasts to ``leaf_shape``."""
  try:
    fits = np.broadcast_shapes(shape, leaf_shape) == leaf_shape
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"{what} of leaf '{path}' has shape {shape}, which does not "
                     f"broadcast to the leaf's shape {leaf_shape}.")


def check_finite(tree: Any, *, what: str) -> None:
  """Raises ``ValueError`` naming every leaf with NaN or Inf values (concrete arrays only).

  Traced leaves are skipped: inside ``jit`` the transforms guard themselves instead.
  """
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if leaf is None or not is_concrete(leaf):
      continue
    if not np.all(np.isfinite(np.asarray(leaf))):
      bad.append(path_str(path))
  if bad:
    raise ValueError(f"{what} has non-finite values (NaN or Inf) at leaf path(s): {bad}.")


def all_finite(tree: Any) -> jax.Array:
  """A traced-friendly scalar bool: every leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_fraction(value: Any, *, what: str) -> None:
  """Raises ``ValueError`` unless a concrete ``value`` lies in [0, 1]."""
  if is_concrete(value):
    v = np.asarray(value)
    if not np.all((v >= 0.0) & (v <= 1.0)):
      raise ValueError(f"{what} must lie in [0, 1], got {value}.")

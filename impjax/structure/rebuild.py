"""The user's own model class rebuilt at compacted widths: the config whose params fit.

After :func:`impjax.structure.compact_model` the params are smaller, and where the model's own
config can express the new widths (an MLP width, a number of heads or kv heads, per layer where
the config has one value per layer), :func:`fit_config` finds that config. It reads nothing
from field names: the integer fields (and integers inside tuple fields) whose value is a size
that changed between the traced and the compacted params, or a multiple or divisor of one
(a fused ``heads * head_dim`` width), are tried at the sizes scaled alike — first greedily, one
change at a time, each the one leaving the fewest leaves misshapen, then every combination,
fewest changes first. A candidate is accepted only when the model built from it has exactly the
compacted params' shapes (checked abstractly, with ``jax.eval_shape``: nothing is allocated).

Example:
  >>> import dataclasses, jax, jax.numpy as jnp
  >>> from impjax import structure
  >>> @dataclasses.dataclass(frozen=True)
  ... class Config:
  ...   width: int = 4
  ...   hidden: int = 6
  >>> shapes = lambda c: {"w1": jax.ShapeDtypeStruct((c.width, c.hidden), jnp.float32),
  ...                     "w2": jax.ShapeDtypeStruct((c.hidden, 2), jnp.float32)}
  >>> structure.fit_config(Config(), shapes, {"w1": jnp.ones((4, 3)), "w2": jnp.ones((3, 2))})
  Config(width=4, hidden=3)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable

import jax
import numpy as np

from impjax import tree_utils

_MAX_CANDIDATES = 4096
"""Configs tried at most before :func:`fit_config` gives up."""


def _fields(config: Any) -> dict[str, Any]:
  if isinstance(config, dict):
    return dict(config)
  if dataclasses.is_dataclass(config):
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  if hasattr(config, "_asdict"):
    return dict(config._asdict())
  raise TypeError(f"fit_config needs a dataclass, NamedTuple or dict config, got {type(config)}.")


def _replace(config: Any, changes: dict[str, Any]) -> Any:
  if isinstance(config, dict):
    return {**config, **changes}
  if dataclasses.is_dataclass(config):
    return dataclasses.replace(config, **changes)
  return config._replace(**changes)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {p: tuple(np.shape(x)) for p, x in tree_utils.leaves_by_path(tree).items()}


def fit_config(config: Any, abstract_params: Callable[[Any], Any], params: tree_utils.Params
               ) -> Any:
  """The config, differing from ``config`` in as few integers as possible, whose model has the
  shapes of ``params``.

  Args:
    config: the model's config (a dataclass, a NamedTuple, or a dict of constructor
      arguments), as the traced params were built.
    abstract_params: ``config -> params`` of the model built from it, shapes only (e.g.
      ``lambda c: jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(Model(c, rngs=...),
      nnx.Param)))``, or the ``"params"`` of ``jax.eval_shape(Model(c).init, key, x)``).
    params: the compacted params.

  Returns:
    The fitted config; build the model from it and load ``params`` into it.

  Raises:
    ValueError: when no config of the tried ones fits (e.g. layers compacted to different
      widths where the config holds one width for all, or derives a head's width from the
      number of heads), naming the leaves the nearest candidate gets wrong.
  """
  old, new = _shapes(abstract_params(config)), _shapes(params)
  if sorted(old) != sorted(new):
    raise ValueError(f"The config's params and these differ in leaves: only in the config's "
                     f"{sorted(set(old) - set(new))}, only in these {sorted(set(new) - set(old))}.")
  resized: dict[int, set[int]] = {}
  for path, shape in new.items():
    if len(shape) != len(old[path]):
      raise ValueError(f"'{path}' has {len(shape)} axes here and {len(old[path])} in the config.")
    for was, now in zip(old[path], shape):
      if was != now:
        resized.setdefault(was, set()).add(now)
  if not resized:
    return config
  # Every integer of the config (inside tuples too) that a resize scales to a whole number:
  # a resized size itself, or one fused with it (heads x head_dim resized as heads or as the
  # product) — each tried at its scaled values.
  fields = _fields(config)
  slots = []
  for name, value in fields.items():
    values = value if isinstance(value, tuple) else (value,)
    for i, v in enumerate(values):
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        continue
      scaled = sorted({v * b // a for a, sizes in resized.items() for b in sizes
                       if (v * b) % a == 0 and (v % a == 0 or a % v == 0)} - {v, 0})
      if scaled:
        slots.append((name, i if isinstance(value, tuple) else None, scaled))

  def build(choice):
    changes = {}
    for (name, index, _), v in choice:
      if index is None:
        changes[name] = v
      else:
        current = list(changes.get(name, fields[name]))
        current[index] = v
        changes[name] = tuple(current)
    return _replace(config, changes)

  tried, nearest = 0, None

  def misfits(choice):
    """The candidate and its wrong leaves, or ``None`` where its model rejects it."""
    nonlocal tried, nearest
    tried += 1
    try:
      candidate = build(choice)
      shapes = _shapes(jax.eval_shape(lambda: abstract_params(candidate)))
    except Exception:  # pylint: disable=broad-except  # a config its model rejects
      return None
    wrong = sorted(p for p in new if shapes.get(p) != new[p])
    if nearest is None or len(wrong) < len(nearest[1]):
      nearest = (candidate, wrong)
    return candidate, wrong

  # Greedy first: one change at a time, each the one that leaves the fewest leaves wrong
  # (independent widths, e.g. one per layer, fit in a few rounds).
  choice, misfit = [], sum(old[p] != new[p] for p in new)
  while True:
    best = None
    for slot in slots:
      if any(slot is chosen for chosen, _ in choice):
        continue
      for v in slot[2]:
        found = misfits(choice + [(slot, v)])
        if found is not None and (best is None or len(found[1]) < best[0]):
          best = (len(found[1]), slot, v, found[0])
    if best is None or best[0] >= misfit:
      break
    misfit, choice = best[0], choice + [(best[1], best[2])]
    if not misfit:
      return best[3]
  # Then every combination, fewest changes first (coupled sizes: heads with their width).
  for count in range(1, len(slots) + 1):
    for chosen in itertools.combinations(slots, count):
      for values in itertools.product(*(sizes for _, _, sizes in chosen)):
        if tried > _MAX_CANDIDATES:
          break
        found = misfits(list(zip(chosen, values)))
        if found is not None and not found[1]:
          return found[0]
  detail = (f" the nearest, {nearest[0]}, gets {nearest[1][:6]} wrong" if nearest
            else " no integer of the config holds a resized size")
  raise ValueError(f"No config fits these params ({min(tried, _MAX_CANDIDATES)} tried):{detail}.")

"""Slicing trained models to a smaller width or depth: a really smaller model and its config.

Width (any NNX model): the model's MLP-unit and head groups are read from its computation
(:func:`impjax.structure.discover`); every group keeps the ``ceil(width * K)`` units of lowest
rank with all their coupled entries — exactly the units that
:func:`impjax.structure.width_masks` (and :func:`impjax.transforms.width_masks` for the rules'
module ranks) keeps — so the sliced model computes what the full model computes at that width.
The params are compacted (:func:`impjax.pruning.compact`) and the model's own class is rebuilt
from the config that fits them (:func:`impjax.structure.fit_config`). The residual stream, the
stem and the classifier are never narrowed. Depth: the chosen blocks of a
:class:`impjax.models.ResidualMLP` are kept, in order.

Reference: Horvath et al. 2021 (FjORD: extracting sub-models of any width); Fan et al. 2020
(LayerDrop: pruning layers at inference); "sorting units by importance preserves the
function" (Molchanov et al. 2019 prune whole units the same way).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax import models, slicing
  >>> config = {"in_features": 64, "hidden": (32, 32), "num_classes": 10}
  >>> model = models.MLP(**config, rngs=nnx.Rngs(0))
  >>> small, small_config = slicing.slice_width(model, 0.25, jnp.ones((1, 64)), config=config)
  >>> small_config
  {'in_features': 64, 'hidden': (8, 8), 'num_classes': 10}
  >>> small(jnp.ones((1, 64))).shape
  (1, 10)
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from impjax import models
from impjax import pruning
from impjax import structure

_VARIABLES = (nnx.Param, nnx.BatchStat)
"""The variables a slice compacts: the params and the normalization statistics."""


def _params(model: nnx.Module) -> dict:
  """The model's parameters as a nested dict of numpy arrays (slicing them compiles nothing)."""
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _constructor(cls, config: Any):
  """``cls(**config)`` (a dict) or ``cls(config)``, as a thunk."""
  if isinstance(config, dict):
    return lambda: cls(**config, rngs=nnx.Rngs(0))
  return lambda: cls(config, rngs=nnx.Rngs(0))


def _build(cls, config: Any, variables: dict, rest: Any = None):
  """The model of ``config`` holding ``variables`` (and the other state ``rest``), built
  without running its initializers."""
  graphdef = nnx.graphdef(nnx.eval_shape(_constructor(cls, config)))
  states = (jax.tree.map(jnp.asarray, variables),) + (() if rest is None else (rest,))
  return nnx.merge(graphdef, *states)


def _group_ranks(s: structure.Structure, ranks: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """``ranks`` keyed by group name; a module path key names the group its kernel produces."""
  prunable = s.prunable()
  out = {}
  for key, rank in ranks.items():
    names = [key] if key in prunable else [
        n for n in prunable if s.groups[n].producer == f"{key}/kernel"]
    if len(names) != 1:
      raise ValueError(f"ranks['{key}'] names no group of the model; its groups: "
                       f"{sorted(prunable)}.")
    out[names[0]] = jnp.asarray(rank)
  return out


def slice_width(model: nnx.Module, width: float, *inputs: Any, config: Any,
                ranks: dict[str, jax.Array] | None = None) -> tuple[nnx.Module, Any]:
  """A copy of ``model`` with every MLP-unit and head group cut to ``ceil(width * K)`` units.

  Args:
    model: an NNX module built as ``type(model)(**config, rngs=...)`` (``config`` a dict) or
      ``type(model)(config, rngs=...)`` (a dataclass or NamedTuple config).
    width: fraction of units kept, in (0, 1].
    *inputs: example inputs of ``model`` (arrays or ``jax.ShapeDtypeStruct``).
    config: the config ``model`` was built from.
    ranks: ``{group name or module path: rank per unit}`` (0 = most important), e.g.
      :func:`impjax.structure.unit_ranks` or ordered dropout's; a module path (``hidden/0``)
      names the group of its kernel's output units. Missing groups keep the index order.
      Kept units stay in index order.

  Returns:
    ``(smaller model, its config)``.

  Raises:
    ValueError: for a width outside (0, 1], a rank key that names no group, or widths the
      config cannot express (from :func:`impjax.structure.fit_config`).
  """
  if not 0.0 < width <= 1.0:
    raise ValueError(f"width must lie in (0, 1], got {width}.")
  graphdef, variables, rest = nnx.split(model, _VARIABLES, ...)
  variables = nnx.to_pure_dict(variables)
  fn = lambda v, *x: nnx.merge(graphdef, v, rest)(*x)
  s = structure.discover(fn, variables, *inputs)
  order = structure.unit_ranks(s, variables)
  order.update(_group_ranks(s, ranks or {}))
  keep = structure.keep_at_width(order, width)
  small = pruning.compact(variables, {name: s.groups[name].coupled for name in keep}, keep)
  abstract = lambda c: nnx.to_pure_dict(nnx.state(
      nnx.eval_shape(_constructor(type(model), c)), _VARIABLES))
  fitted = structure.fit_config(config, abstract, small)
  return _build(type(model), fitted, small, rest), fitted


def slice_depth(model: models.ResidualMLP,
                layers: Sequence[int]) -> tuple[models.ResidualMLP, dict]:
  """A copy of a :class:`impjax.models.ResidualMLP` with only the blocks ``layers`` (in order).

  Example:
    >>> model = models.ResidualMLP(64, 16, 32, 4, 10, rngs=nnx.Rngs(0))
    >>> slice_depth(model, [0, 2])[1]
    {'in_features': 64, 'width': 16, 'hidden': 32, 'depth': 2, 'num_classes': 10}
  """
  if not isinstance(model, models.ResidualMLP):
    raise ValueError(f"slice_depth supports impjax ResidualMLP, got {type(model).__name__}.")
  params = _params(model)
  depth = params["blocks"]["up"]["kernel"].shape[0]
  idx = np.asarray(layers, np.int64)
  if idx.ndim != 1 or idx.size == 0 or np.any((idx < 0) | (idx >= depth)):
    raise ValueError(f"layers must be a non-empty list of block indices in [0, {depth}), "
                     f"got {list(layers)}.")
  params["blocks"] = jax.tree.map(lambda a: a[idx], params["blocks"])
  config = {"in_features": int(params["embed"]["kernel"].shape[0]),
            "width": int(params["embed"]["kernel"].shape[1]),
            "hidden": int(params["blocks"]["up"]["kernel"].shape[-1]),
            "depth": int(idx.size), "num_classes": int(params["head"]["kernel"].shape[-1])}
  return _build(models.ResidualMLP, config, params), config

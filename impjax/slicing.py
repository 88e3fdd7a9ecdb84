"""Slicing trained models to a smaller width or depth: a really smaller model and its config.

Width: every ordered layer's units are sorted by rank (0 = most important) — a unit's kernel
column, its bias entry and the next layer's input rows move together, which preserves the
function — and the first ``ceil(width * K)`` are kept, exactly the units that
:func:`impjax.transforms.width_masks` keeps, so the sliced model computes what the full model
computes at that width. The classifier output is never narrowed. Depth: the chosen blocks of
a :class:`impjax.models.ResidualMLP` are kept, in order.

The returned config holds the constructor arguments of the smaller model
(``type(model)(**config, rngs=...)`` rebuilds its architecture).

Reference: Horvath et al. 2021 (FjORD: extracting sub-models of any width); Fan et al. 2020
(LayerDrop: pruning layers at inference); "sorting units by importance preserves the
function" (Molchanov et al. 2019 prune whole units the same way).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax import models, slicing
  >>> model = models.MLP(64, (32, 32), 10, rngs=nnx.Rngs(0))
  >>> small, config = slicing.slice_width(model, 0.25)
  >>> config
  {'in_features': 64, 'hidden': (8, 8), 'num_classes': 10}
  >>> small(jnp.ones((1, 64))).shape
  (1, 10)
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from impjax import models
from impjax import select


def _params(model: nnx.Module) -> dict:
  """The model's parameters as a nested dict of numpy arrays (slicing them compiles nothing)."""
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _build(cls, config: dict, params: dict):
  """``cls(**config)`` holding ``params``, built without running its initializers."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: cls(**config, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def _kept(ranks: dict[str, jax.Array], module: str, num_units: int, width: float) -> np.ndarray:
  """Indices of the kept units of ``module``, most important first."""
  rank = np.asarray(ranks[module]) if module in ranks else np.arange(num_units)
  if rank.shape != (num_units,):
    raise ValueError(f"ranks['{module}'] has shape {rank.shape}, but the module has "
                     f"{num_units} units.")
  return np.argsort(rank, kind="stable")[:select.num_kept(width, num_units)]


def _slice_chain(layers: dict, name: str, ranks: dict, width: float) -> tuple[dict, np.ndarray]:
  """Slices a chain of layers (kernel ``[..., in, out]``, bias ``[out]``): each keeps its top
  output units and the inputs its predecessor kept. Returns the layers and the last kept units."""
  sliced, previous = {}, None
  for layer in range(len(layers)):
    kernel, bias = layers[layer]["kernel"], layers[layer]["bias"]
    keep = _kept(ranks, f"{name}/{layer}", kernel.shape[-1], width)
    if previous is not None:
      kernel = jnp.take(kernel, previous, axis=-2)
    sliced[layer] = {"kernel": kernel[..., keep], "bias": bias[keep]}
    previous = keep
  return sliced, previous


def _slice_mlp(model: models.MLP, width: float, ranks: dict) -> tuple[models.MLP, dict]:
  params = _params(model)
  hidden, previous = _slice_chain(params["hidden"], "hidden", ranks, width)
  head = dict(params["head"], kernel=params["head"]["kernel"][previous])
  config = {"in_features": int(params["hidden"][0]["kernel"].shape[0]),
            "hidden": tuple(len(hidden[i]["bias"]) for i in range(len(hidden))),
            "num_classes": int(head["kernel"].shape[-1])}
  return _build(models.MLP, config, {"hidden": hidden, "head": head}), config


def _slice_cnn(model: models.CNN, width: float, ranks: dict) -> tuple[models.CNN, dict]:
  params = _params(model)
  convs, previous = _slice_chain(params["convs"], "convs", ranks, width)
  kernel = params["dense"]["kernel"]
  channels = params["convs"][len(convs) - 1]["kernel"].shape[-1]
  positions = kernel.shape[0] // channels  # inputs are flattened (h, w, channel)
  keep_dense = _kept(ranks, "dense", kernel.shape[-1], width)
  kernel = kernel.reshape(positions, channels, -1)[:, previous].reshape(
      positions * len(previous), -1)[:, keep_dense]
  dense = {"kernel": kernel, "bias": params["dense"]["bias"][keep_dense]}
  head = dict(params["head"], kernel=params["head"]["kernel"][keep_dense])
  config = {"in_channels": int(params["convs"][0]["kernel"].shape[2]),
            "channels": tuple(len(convs[i]["bias"]) for i in range(len(convs))),
            "dense": len(keep_dense), "num_classes": int(head["kernel"].shape[-1]),
            "image_size": 2 * int(round(np.sqrt(positions)))}
  return _build(models.CNN, config, {"convs": convs, "dense": dense, "head": head}), config


def slice_width(model: nnx.Module, width: float,
                ranks: dict[str, jax.Array] | None = None) -> tuple[nnx.Module, dict]:
  """A copy of ``model`` with every ordered layer cut to ``ceil(width * K)`` units.

  Args:
    model: an :class:`impjax.models.MLP` (ordered: ``hidden/i``) or
      :class:`impjax.models.CNN` (ordered: ``convs/i`` and ``dense``).
    width: fraction of units kept, in (0, 1].
    ranks: ``{module path: rank per unit}`` (e.g. ordered dropout's); missing modules keep
      the index order. The kept units are stored most important first, so the smaller model
      is again ordered by index.

  Returns:
    ``(smaller model, its constructor config)``.
  """
  if not 0.0 < width <= 1.0:
    raise ValueError(f"width must lie in (0, 1], got {width}.")
  ranks = {} if ranks is None else ranks
  if isinstance(model, models.MLP):
    return _slice_mlp(model, width, ranks)
  if isinstance(model, models.CNN):
    return _slice_cnn(model, width, ranks)
  raise ValueError(f"slice_width supports impjax MLP and CNN models, got {type(model).__name__}.")


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

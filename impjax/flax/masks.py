"""Flax glue for masking: read the masks of an NNX ``Optimizer``, a Linen ``TrainState`` or a
raw optax state, and prune an NNX model in place.

``impjax.transforms.prune`` is an ordinary optax transformation, so it drops into
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``TrainState.create(..., tx=tx)`` unchanged;
these helpers only read its state back out.

Example:
  >>> import jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> import impjax as ij
  >>> model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  >>> tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5), "magnitude")
  >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 4))).sum())(model)
  >>> _ = optimizer.update(model, grads)
  >>> int(ij.flax.masks_of(optimizer)["kernel"].sum()), int((model.kernel[...] == 0).sum())
  (4, 4)
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from impjax import tree_utils
from impjax.transforms import masking


def masks_of(holder: Any, params: tree_utils.Params = None) -> Any:
  """Keep-masks held by an ``nnx.Optimizer``, a Linen ``TrainState`` or an optax state.

  Bit-packed masks (``prune(..., pack=True)``) are unpacked with ``params`` (a Linen
  ``TrainState`` brings its own).
  """
  if isinstance(holder, nnx.Optimizer):
    opt_state = nnx.as_pure(holder.opt_state)
  else:
    opt_state = getattr(holder, "opt_state", holder)
  masks = _pure(masking.find_prune_state(opt_state).masks)
  params = getattr(holder, "params", None) if params is None else _pure(params)
  return masks if params is None else masking.unpack_masks(masks, params)


def prune_model(model: nnx.Module, masks: tree_utils.Masks) -> None:
  """Zeroes the pruned parameters of an NNX model in place.

  Example:
    >>> import jax.numpy as jnp
    >>> m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> prune_model(m, {"kernel": jnp.array([[True], [False]]), "bias": jnp.array(True)})
    >>> float(m.kernel[1, 0])
    0.0
  """
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  nnx.update(model, masking.apply_masks(params, _pure(masks)))


def _pure(tree: Any) -> Any:
  """Nested dicts for an ``nnx.State`` (as an NNX optimizer holds), else ``tree``."""
  return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree

"""Flax integration: activation capture and train-step pieces for Flax models.

- ``capture``: :func:`tap` activations inside NNX modules, read them with
  :func:`intermediates`, and stream sums of them over calibration batches
  (:func:`accumulate_sums`).
- ``masks``: the masks of an ``nnx.Optimizer``, a Linen ``TrainState`` or an optax state
  (:func:`masks_of`), and in-place pruning of NNX models (:func:`prune_model`).
- ``training``: the jitted train step, cross-entropy loss and split accuracy that the main
  job, the benchmarks and the notebooks share.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax import flax as ij_flax
  >>> class Tapped(nnx.Module):
  ...   def __call__(self, x):
  ...     ij_flax.tap(self, "inputs", x)
  ...     return 2 * x
  >>> out, acts = ij_flax.intermediates(lambda m, x: m(x), Tapped(), jnp.ones(2))
  >>> acts["inputs"].tolist()
  [1.0, 1.0]
"""

from impjax.flax.capture import accumulate_sums
from impjax.flax.capture import intermediates
from impjax.flax.capture import tap
from impjax.flax.masks import masks_of
from impjax.flax.masks import prune_model
from impjax.flax.training import cross_entropy
from impjax.flax.training import make_accuracy_fn
from impjax.flax.training import make_train_step

__all__ = [
    "accumulate_sums",
    "cross_entropy",
    "intermediates",
    "make_accuracy_fn",
    "make_train_step",
    "masks_of",
    "prune_model",
    "tap",
]

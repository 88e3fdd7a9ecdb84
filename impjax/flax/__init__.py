"""Flax integration: masks from NNX optimizers and Linen train states; in-place pruning."""

from impjax.flax.masks import masks_of, prune_model

__all__ = ["masks_of", "prune_model"]

from impjax.flax import capture
from impjax.flax.capture import calibrate, intermediates, tap

__all__ += ["capture", "calibrate", "intermediates", "tap"]
